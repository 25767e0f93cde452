"""Trainer callbacks: the wall-time budget (`train.max_time_s`)."""

from __future__ import annotations

import json

from tests.conftest import fast_config

import lmtune
from lmtune.config import RunConfig


def test_a_time_budget_ends_training_after_the_step_that_crosses_it(tiny_bert, sentiment_files, tmp_path):
    budgeted = {"epochs": 3, "max_time_s": 1e-6}  # crossed by the first optimizer step
    run = lmtune.train(
        RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path / "t", train=budgeted))
    )
    assert run.metrics["train"]["steps"] == 1
    log = [json.loads(line) for line in (run.directory / "train_log.jsonl").read_text().splitlines()]
    evaluations = [r for r in log if "eval_loss" in r]
    # That step was evaluated as an epoch end is (then once more by the final evaluation).
    assert evaluations and {r["step"] for r in evaluations} == {1}
    assert "accuracy" in run.metrics["test"]  # and the run finished as usual, best checkpoint and all


def test_without_a_budget_training_runs_its_epochs(tiny_bert, sentiment_files, tmp_path):
    run = lmtune.train(RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path / "t")))
    assert run.metrics["train"]["epochs_completed"] == 3
