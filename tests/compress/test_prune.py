"""Magnitude pruning reaches its sparsity exactly; head pruning really removes heads."""

from __future__ import annotations

import pytest
import torch

from lmtune.compress.prune import (
    choose_heads,
    load_head_pruned,
    measured_sparsity,
    prunable_linears,
    prune_heads,
    prune_unstructured,
    save_head_pruned,
)
from lmtune.errors import LmtuneError
from lmtune.methods.base import count_parameters
from lmtune.run import Run


def test_unstructured_sparsity_is_exact_and_model_predicts(tiny_full_run, separable_files):
    run = Run.load(tiny_full_run, device="cpu")
    heads = run.task.head_names
    total = sum(m.weight.numel() for _, m in prunable_linears(run.model, heads))
    classifier_before = run.model.classifier.weight.clone()
    info = prune_unstructured(run.model, 0.5, heads)
    assert info["sparsity"] == pytest.approx(round(0.5 * total) / total, abs=1e-12)
    assert measured_sparsity(run.model, heads) == info["sparsity"]
    assert not any(name.endswith("_orig") for name, _ in run.model.named_parameters())  # permanent
    assert torch.equal(run.model.classifier.weight, classifier_before)  # the head is left whole
    test = run.task.read_labelled(str(separable_files["test"]))
    assert run.task.evaluate(run.model, run.tokenizer, test, 16).metrics["accuracy"] >= 0.75


def test_bad_sparsity():
    with pytest.raises(LmtuneError, match="between 0 and 1"):
        prune_unstructured(torch.nn.Linear(2, 2), 1.5, ())


def test_head_pruning_removes_parameters(tiny_full_run, tmp_path):
    run = Run.load(tiny_full_run, device="cpu")
    model = run.model
    _, before = count_parameters(model)
    hidden = model.config.hidden_size
    head_size = hidden // model.config.num_attention_heads
    enc = run.tokenizer(["the film was great", "this book was poor"], padding=True, return_tensors="pt")
    removed = prune_heads(model, 3)
    assert sum(len(v) for v in removed.values()) == 3
    _, after = count_parameters(model)
    # Each head: its query/key/value rows (weights + biases) and its output-projection columns.
    per_head = 3 * (head_size * hidden + head_size) + hidden * head_size
    assert before - after == 3 * per_head
    layers = model.bert.encoder.layer
    assert sum(layer.attention.self.num_attention_heads for layer in layers) == 2 * 4 - 3
    with torch.inference_mode():
        logits = model(**enc).logits
    save_head_pruned(model, run.tokenizer, removed, tmp_path / "heads")
    reloaded = load_head_pruned(tmp_path / "heads")
    with torch.inference_mode():
        assert torch.allclose(reloaded(**enc).logits, logits, atol=1e-6)


def test_choose_heads_keeps_one_per_layer():
    scores = [[0.1, 0.2, 5.0], [0.3, 4.0, 6.0]]
    assert choose_heads(scores, 3) == {0: [0, 1], 1: [0]}
    assert choose_heads(scores, 4) == {0: [0, 1], 1: [0, 1]}
    with pytest.raises(LmtuneError, match="choose between 1 and 4"):
        choose_heads(scores, 5)
