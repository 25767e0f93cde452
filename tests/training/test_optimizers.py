"""The optimizers beyond AdamW: each trains (the loss falls) through the Trainer's own optimizer
class for it, GaLore and APOLLO on the model's own weights; misfits are refused by the config."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
from tests.conftest import fast_config

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.run import train as train_run
from lmtune.training.trainer import LmtuneTrainer

CASES = {
    # optimizer: (method, learning rate, the optimizer class the Trainer builds)
    "adamw_8bit": ("lora", 5e-3, "bitsandbytes.AdamW"),
    "lion": ("lora", 1e-3, "bitsandbytes.Lion"),
    "galore_adamw": ("full", 1e-3, "galore_torch.AdamW"),
    "apollo_adamw": ("full", 1e-3, "apollo_torch.AdamW"),
}


class RecordingTrainer(LmtuneTrainer):
    built: ClassVar[list[tuple]] = []

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        kind = type(optimizer)
        bits = getattr(getattr(optimizer, "args", None), "optim_bits", None)  # bitsandbytes' state width
        ranks = [g["rank"] for g in optimizer.param_groups if "rank" in g]  # GaLore/APOLLO's projection
        RecordingTrainer.built.append((f"{kind.__module__.split('.')[0]}.{kind.__name__}", bits, ranks))
        return optimizer


@pytest.mark.parametrize("optimizer", sorted(CASES))
def test_optimizer_trains(optimizer, tiny_bert, sentiment_files, tmp_path):
    method, rate, expected = CASES[optimizer]
    train = {"epochs": 4, "learning_rate": rate, "optimizer": optimizer, "optimizer_args": {}}
    if optimizer in ("galore_adamw", "apollo_adamw"):
        train |= {"optimizer_target_modules": ["query", "value"], "optimizer_args": {"rank": 8}}
    cfg = RunConfig.from_dict(
        fast_config(tiny_bert, sentiment_files, tmp_path / optimizer, method=method, train=train)
    )
    RecordingTrainer.built.clear()
    run = train_run(cfg, trainer_class=RecordingTrainer)
    bits = 8 if optimizer == "adamw_8bit" else 32 if expected.startswith("bitsandbytes") else None
    ranks = [8] if optimizer in ("galore_adamw", "apollo_adamw") else []
    assert RecordingTrainer.built == [(expected, bits, ranks)]
    log = [json.loads(line) for line in (run.directory / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) >= 4 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert lmtune.load_run(run.directory).predict(["the film was great"])[0]["label"] in (
        "negative",
        "positive",
    )


def test_low_rank_optimizers_need_the_models_own_weights(tiny_bert, sentiment_files, tmp_path):
    cfg = fast_config(
        tiny_bert, sentiment_files, tmp_path, method="lora", train={"optimizer": "galore_adamw"}
    )
    with pytest.raises(LmtuneError, match="which method lora freezes"):
        RunConfig.from_dict(cfg)


def test_a_missing_optimizer_package_is_named(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "apollo_torch" else real(name, *a)
    )
    cfg = fast_config(
        tiny_bert, sentiment_files, tmp_path, method="full", train={"optimizer": "apollo_adamw"}
    )
    with pytest.raises(LmtuneError, match=r"needs the apollo_torch package.*lmtune\[optimizers\]"):
        RunConfig.from_dict(cfg)
