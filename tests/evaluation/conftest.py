"""A tiny classification run with task.calibration=temperature, trained once per session for the
calibration, group-metrics and probe tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import fast_config, separable_splits


@pytest.fixture(scope="session")
def calibrated_run(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny-BERT LoRA sentiment run whose temperature was fitted on validation."""
    import lmtune
    from lmtune.config import RunConfig

    root = tmp_path_factory.mktemp("calibrated")
    files = separable_splits(root, 48, 24, 16)
    cfg = fast_config(
        tiny_bert,
        files,
        root / "run",
        task={"type": "classification", "calibration": "temperature"},
        method="full",
        train={"epochs": 12, "learning_rate": 1e-2, "eval_strategy": "no", "save_strategy": "no"},
    )
    lmtune.train(RunConfig.from_dict(cfg))
    return root / "run"
