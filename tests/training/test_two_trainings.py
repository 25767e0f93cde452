"""Two trainings in one process (sweep trials in threads) share no state: each model has its own
dropout generator and its own attention setting, other models keep plain "sdpa", and the runs
come out as they do one after the other."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from tests.conftest import fast_config
from transformers import TrainerCallback
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import lmtune
from lmtune.run import train
from lmtune.training import attention, fast_dropout

TIMEOUT_S = 300


class Probe(TrainerCallback):
    """Records the model's dropout generator and attention setting at the start of training.

    With `setup` (a lock this thread holds) and `start` (a barrier), it lets the next thread set
    up once this one has, and starts training when all have: setting up draws the initial
    weights from torch's global RNG, which threads cannot share deterministically; training
    itself must not touch anything shared.
    """

    def __init__(self, setup: threading.Lock | None = None, start: threading.Barrier | None = None) -> None:
        self.setup, self.start = setup, start
        self.rng: fast_dropout.DropoutRng | None = None
        self.attention: list[str] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.rng = fast_dropout.rng_of(model)
        self.attention.append(attention.pretrained_model(model).config._attn_implementation)
        if self.setup is not None:
            self.release()
            self.start.wait(timeout=TIMEOUT_S)

    def release(self) -> None:
        if self.setup is not None and self.setup.locked():
            self.setup.release()
            self.setup = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.attention.append(attention.pretrained_model(model).config._attn_implementation)


def _config(tiny_bert: str, files: dict, out: Path, seed: int) -> lmtune.RunConfig:
    # Dropout everywhere (BERT's hidden and attention dropouts, LoRA's), all on the fast mask.
    raw = fast_config(
        tiny_bert,
        files,
        out,
        train={"epochs": 2, "learning_rate": 1e-3, "seed": seed, "fast_dropout": True, "logging_steps": 1},
        method={"name": "lora", "dropout": 0.1},
    )
    raw["data"]["max_length"] = 16
    return lmtune.RunConfig.from_dict(raw)


def _losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def _in_threads(configs: list[lmtune.RunConfig]) -> tuple[list[lmtune.Run], list[Probe]]:
    """Train each config in its own thread, setting up one after the other, training side by side."""
    setup, start = threading.Lock(), threading.Barrier(len(configs))
    probes = [Probe(setup, start) for _ in configs]
    runs: list = [None] * len(configs)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            assert setup.acquire(timeout=TIMEOUT_S)
            runs[i] = train(configs[i], callbacks=[probes[i]])
        except BaseException as exc:  # re-raised by the test's thread
            errors.append(exc)
            probes[i].release()
            start.abort()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(configs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT_S)
    if errors:
        raise errors[0]
    return runs, probes


def test_two_trainings_in_threads_share_nothing(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    routed_modules: list[torch.nn.Module] = []
    route = ALL_ATTENTION_FUNCTIONS[attention.ROUTE]

    def counting(module, *args, **kwargs):
        routed_modules.append(module)
        return route(module, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, attention.ROUTE, counting)
    seeds = (1, 2)
    alone = [train(_config(tiny_bert, sentiment_files, tmp_path / f"alone-{s}", s)) for s in seeds]
    together, probes = _in_threads(
        [_config(tiny_bert, sentiment_files, tmp_path / f"thread-{s}", s) for s in seeds]
    )

    # Each training drew from its own generator, and was on lmtune's route only while it trained.
    rngs = [p.rng for p in probes]
    assert all(isinstance(r, fast_dropout.DropoutRng) for r in rngs) and rngs[0] is not rngs[1]
    for probe in probes:
        assert len(probe.attention) > 1 and set(probe.attention) == {attention.ROUTE}
    for run in together:
        assert attention.pretrained_model(run.model).config._attn_implementation == "sdpa"
    assert routed_modules

    # The same runs one after the other and side by side: the same losses and metrics.
    for run_alone, run_together in zip(alone, together, strict=True):
        losses = _losses(run_alone.directory)
        assert len(set(losses)) > 1
        assert _losses(run_together.directory) == pytest.approx(losses, rel=1e-5, abs=1e-7)
        assert run_together.metrics["validation"] == pytest.approx(run_alone.metrics["validation"])

    # A model built outside lmtune in the same process is on transformers' own "sdpa", and never
    # goes through lmtune's route, in training mode either.
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] not in (counting, route)
    outside = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert outside.config._attn_implementation == "sdpa"
    routed_modules.clear()
    outside.train()
    outside(input_ids=torch.randint(1000, 2000, (2, 9)), labels=torch.tensor([0, 1])).loss.backward()
    assert not routed_modules
