"""Ensembles: averaged probabilities match a hand computation; mismatched members are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmtune.config import RunConfig
from lmtune.ensemble import ensemble
from lmtune.errors import LmtuneError
from lmtune.run import train
from tests.conftest import fast_config, separable_rows, write_csv


def _run(tiny_bert: str, files: dict, out: Path, seed: int, method: str = "lora") -> Path:
    raw = fast_config(
        tiny_bert, files, out, method=method, train={"epochs": 1, "seed": seed, "learning_rate": 5e-3}
    )
    raw["data"]["max_length"] = 16
    return train(RunConfig.from_dict(raw)).directory


def test_ensemble_matches_hand_computation(tiny_bert: str, sentiment_files: dict, tmp_path: Path) -> None:
    from lmtune.run import load_run

    runs = [
        _run(tiny_bert, sentiment_files, tmp_path / "a", seed=1),
        _run(tiny_bert, sentiment_files, tmp_path / "b", seed=2, method="bitfit"),
    ]
    data = str(sentiment_files["test"])
    result = ensemble(runs, data)

    texts = [row.split(",")[0] for row in Path(data).read_text().splitlines()[1:]]
    gold = [row.split(",")[1] for row in Path(data).read_text().splitlines()[1:]]
    members = [load_run(r).predict(texts) for r in runs]
    labels = list(members[0][0]["scores"])
    mean = np.mean([[[p["scores"][lb] for lb in labels] for p in preds] for preds in members], axis=0)
    predicted = [labels[i] for i in mean.argmax(axis=1)]
    accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
    assert result["ensemble"]["accuracy"] == pytest.approx(accuracy)
    assert result["ensemble"]["n"] == len(gold)
    for run, preds in zip(runs, members, strict=True):
        own = sum(p["label"] == g for p, g in zip(preds, gold, strict=True)) / len(gold)
        assert result["members"][str(run)]["accuracy"] == pytest.approx(own)
    json.dumps(result)  # what --output writes

    other_files = {
        k: write_csv(
            tmp_path / f"other-{k}.csv", [{**r, "label": r["label"][:3]} for r in separable_rows(32, i)]
        )
        for i, k in enumerate(("train", "validation", "test"))
    }
    mismatched = _run(tiny_bert, other_files, tmp_path / "c", seed=3)
    with pytest.raises(LmtuneError, match="labels"):
        ensemble([runs[0], mismatched], data)
    with pytest.raises(LmtuneError, match="at least two"):
        ensemble([runs[0]], data)
