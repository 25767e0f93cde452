"""Runs for the serving tests, trained once per session: two tiny LoRA runs that answer
oppositely (one trained on flipped labels) and a tiny BitFit run (not a peft adapter)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import fast_config, separable_rows, write_csv

FLIP = {"positive": "negative", "negative": "positive"}


def sentiment_data(directory: Path, flipped: bool) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n, seed in (("train", 64, 1), ("validation", 16, 2), ("test", 16, 3)):
        rows = separable_rows(n, seed)
        if flipped:
            rows = [{**row, "label": FLIP[row["label"]]} for row in rows]
        files[split] = write_csv(directory / f"{split}.csv", rows)
    return files


def train_run(model: str, out: Path, flipped: bool, method: str = "lora", **train: object) -> Path:
    import lmtune
    from lmtune.config import RunConfig

    files = sentiment_data(out.parent / f"{out.name}-data", flipped)
    settings = {"epochs": 1, "learning_rate": 5e-3, **train}
    lmtune.train(RunConfig.from_dict(fast_config(model, files, out, method=method, train=settings)))
    return out


@pytest.fixture(scope="session")
def serve_runs(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'pos': LoRA run, 'neg': LoRA run on flipped labels, 'bitfit': BitFit run} on tiny BERT."""
    root = tmp_path_factory.mktemp("serve-runs")
    return {
        "pos": train_run(tiny_bert, root / "pos", flipped=False),
        "neg": train_run(tiny_bert, root / "neg", flipped=True),
        "bitfit": train_run(tiny_bert, root / "bitfit", flipped=True, method="bitfit"),
    }
