"""Board fixtures: a runs root holding two finished tiny runs (lora, bitfit), a failed-looking
and an interrupted one, and a data root with the CSVs they trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import fast_config, separable_splits


@pytest.fixture(scope="session")
def board_roots(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert: str, minilm_path: str
) -> dict[str, Path]:
    """{"runs", "data", "tiny_bert"}: MiniLM runs `sst/lora` and `sst/bitfit` are complete,
    `broken/interrupted` says running with a process that is gone."""
    import lmtune
    from lmtune.config import RunConfig

    base = tmp_path_factory.mktemp("board")
    data, runs = base / "data", base / "runs"
    data.mkdir()
    files = separable_splits(data, train=48, validation=16, test=16)
    for method in ("lora", "bitfit"):
        # The packaged MiniLM (a tiny random BERT learns nothing in a few steps: its pages would
        # show an empty confusion matrix); launches from the board use the tiny one.
        train = {"epochs": 3, "early_stopping_patience": None}
        cfg = fast_config(minilm_path, files, runs / "sst" / method, method=method, train=train)
        lmtune.train(RunConfig.from_dict(cfg))
    interrupted = runs / "broken" / "interrupted"
    shutil.copytree(runs / "sst" / "lora", interrupted)
    state = json.loads((interrupted / "run.json").read_text())
    state.update(status="running", pid=2**22 + 12345, host=__import__("socket").gethostname())
    (interrupted / "run.json").write_text(json.dumps(state))
    return {"runs": runs, "data": data, "tiny_bert": Path(tiny_bert)}
