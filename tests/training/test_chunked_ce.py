"""Chunked cross-entropy gives the loss and gradients of projecting every labelled position at once."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import save_tiny_gemma

from lmtune.training import chunked_ce


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gemma_lm"])
def test_chunked_loss_equals_the_full_projection(request, model_name, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(model_name))
    monkeypatch.setattr(chunked_ce, "CHUNK_ELEMENTS", 3 * model.config.vocab_size)  # chunks of 3 positions
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (2, 16))
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[0, 3:14], keep[1, 1:8] = True, True  # 18 positions: six chunks
    targets = torch.randint(3, 500, (int(keep.sum()),))

    logits = model(input_ids=ids, logits_to_keep=keep).logits.float()
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    expected.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    got = chunked_ce.labelled_loss_sum(model, {"input_ids": ids}, keep, targets)
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, param in model.named_parameters():
        if name in grads:
            assert torch.allclose(param.grad, grads[name], atol=1e-5, rtol=1e-4), name


def test_chunks_only_above_the_threshold():
    assert not chunked_ce.needs_chunks(400, 49152)  # SmolLM2, a short batch: one projection
    assert chunked_ce.needs_chunks(8 * 400, 262144)  # Gemma 3, a 512-token batch of 8


@pytest.fixture(scope="module")
def tiny_gemma_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Soft-capped final logits: the chunked loss must cap them as the model's forward does.
    return save_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma-lm"), 4096, final_logit_softcapping=30.0)


def test_sft_training_is_the_same_with_chunks(tiny_llama, tmp_path, monkeypatch):
    import json

    from tests.conftest import train_sft_run

    records = [
        {"instruction": f"Say {w}.", "output": f"{w} {w} {w}"} for w in ("red", "green", "blue", "teal")
    ]
    plain = train_sft_run(tiny_llama, records, tmp_path / "plain")
    monkeypatch.setattr(chunked_ce, "CHUNK_ABOVE", 0)
    monkeypatch.setattr(chunked_ce, "CHUNK_ELEMENTS", 4 * 49152)
    chunked = train_sft_run(tiny_llama, records, tmp_path / "chunked")

    def loss(run):
        return json.loads((run / "metrics.json").read_text())["train"]["final_train_loss"]

    assert loss(chunked) == pytest.approx(loss(plain), rel=1e-4)
