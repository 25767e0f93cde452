"""Distillation: the loss, and students that learn from a teacher run."""

from __future__ import annotations

import json

import pytest
import torch

from lmtune.compress.distill import distill, distillation_loss
from lmtune.errors import LmtuneError


def test_loss_is_zero_when_student_matches_teacher():
    logits = torch.randn(4, 3)
    assert distillation_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits, logits + torch.randn(4, 3), 2.0).item() > 0


def test_token_loss_ignores_unlabelled_positions():
    student, teacher = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    labels = torch.tensor([[0, 1, -100, -100, -100], [2, -100, -100, -100, -100]])
    changed = teacher.clone()
    changed[labels == -100] = 9.0  # what the teacher says about padding must not matter
    a = distillation_loss(student, teacher, 2.0, labels=labels)
    b = distillation_loss(student, changed, 2.0, labels=labels)
    assert a.item() == pytest.approx(b.item())


def _untrained_accuracy(run) -> float:
    model = run.task.build_model(run.config.model.name, fresh_head=True)
    test = run.task.read_labelled(run.config.data.test)
    return run.task.evaluate(model, run.tokenizer, test, 16).metrics["accuracy"]


def test_distill_tiny_student(tiny_full_run, tiny_bert, tmp_path):
    from lmtune.run import Run

    out = tmp_path / "student"
    run = distill(
        tiny_full_run,
        tiny_bert,
        output_dir=str(out),
        method="full",
        temperature=2.0,
        alpha=0.7,
        overrides=[
            "train.epochs=6",
            "train.learning_rate=3e-3",
            "train.eval_strategy='no'",  # quoted: YAML reads a bare no as false
            "train.save_strategy='no'",
        ],
    )
    metrics = json.loads((out / "metrics.json").read_text())
    record = metrics["distillation"]
    assert (
        record["teacher_test"]["accuracy"]
        == json.loads((tiny_full_run / "metrics.json").read_text())["test"]["accuracy"]
    )
    assert record["alpha"] == 0.7
    assert metrics["test"]["accuracy"] >= 0.75
    assert metrics["test"]["accuracy"] > _untrained_accuracy(run) + 0.2
    loaded = Run.load(out, device="cpu")  # a normal run directory
    assert loaded.predict("the film was great")[0]["label"] in ("positive", "negative")


def test_distill_rejects_other_tokenizer_and_bad_alpha(tiny_full_run, tmp_path):
    with pytest.raises(LmtuneError, match="alpha"):
        distill(tiny_full_run, "all-MiniLM-L6-v2", output_dir=str(tmp_path / "s"), alpha=1.5)
    from lmtune.models import resolve_model

    smol = resolve_model("SmolLM2-135M-Instruct").path
    with pytest.raises(LmtuneError, match="another tokenizer"):
        distill(tiny_full_run, smol, output_dir=str(tmp_path / "s"))


@pytest.mark.slow
def test_distill_minilm_to_two_layers(minilm_lora_run, tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "student"
    run = distill(
        minilm_lora_run,
        "all-MiniLM-L6-v2",
        output_dir=str(out),
        method="lora",
        student_layers=2,
        overrides=["train.epochs=1", "train.eval_strategy='no'", "train.save_strategy='no'"],
    )
    assert run.model.base_model.model.config.num_hidden_layers == 2
    assert (tmp_path / "cache" / "students" / "all-MiniLM-L6-v2-2layers" / "config.json").exists()
    assert json.loads((out / "metrics.json").read_text())["distillation"]["student_layers"] == 2
