"""Fresh task heads are scaled to the features they read: decoders' large hidden states no
longer start training from saturated logits, encoders' heads are left as transformers made them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertForTokenClassification,
    LlamaForCausalLM,
    LlamaForTokenClassification,
)

from lmtune.training.head_init import fresh_heads, scale_fresh_heads

HEADS = ("classifier", "score")


def _batches(tokenizer_path: str):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = ["the hotel was lovely", "terrible food, never again", "a quiet room", "slow service"]

    def batches(count: int) -> list[dict]:
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        return [dict(encoded, labels=torch.zeros_like(encoded["input_ids"])) for _ in range(count)]

    return batches


@pytest.fixture(scope="module")
def loud_llama(tmp_path_factory: pytest.TempPathFactory, tiny_llama: str) -> str:
    """The tiny Llama with its final norm scaled up 20 times, as a large decoder's features are."""
    directory = tmp_path_factory.mktemp("loud-llama")
    model = LlamaForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.model.norm.weight.fill_(20.0)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(directory)
    return str(directory)


def _logit_std(model: torch.nn.Module, batch: dict) -> float:
    with torch.no_grad():
        features = {k: v for k, v in batch.items() if k != "labels"}
        return float(model(**features).logits.std())


def test_a_decoder_head_on_loud_features_starts_with_soft_logits(loud_llama: str) -> None:
    model = LlamaForTokenClassification.from_pretrained(loud_llama, num_labels=21).train()
    batches = _batches(loud_llama)
    model.eval()
    before = _logit_std(model, batches(1)[0])
    model.train()
    scaled = scale_fresh_heads(model, HEADS, loud_llama, batches)
    assert model.training is True  # the measurement left the mode it found
    model.eval()
    after = _logit_std(model, batches(1)[0])
    assert set(scaled) == {"score"} and 15.0 < scaled["score"] < 25.0
    assert after == pytest.approx(before / scaled["score"], rel=1e-3)
    # Starting loss near log(21) (uniform) instead of several times it.
    loss = model(**batches(1)[0]).loss.item()
    assert loss < 1.2 * torch.log(torch.tensor(21.0)).item()


def test_an_encoder_head_is_left_exactly_as_transformers_made_it(minilm_path: str) -> None:
    model = BertForTokenClassification.from_pretrained(minilm_path, num_labels=5)
    weight = model.classifier.weight.detach().clone()
    assert scale_fresh_heads(model, HEADS, minilm_path, _batches(minilm_path)) == {}
    assert torch.equal(model.classifier.weight, weight)


def test_a_trained_head_in_the_checkpoint_is_not_touched(loud_llama: str, tmp_path: Path) -> None:
    LlamaForTokenClassification.from_pretrained(loud_llama, num_labels=3).save_pretrained(tmp_path)
    model = LlamaForTokenClassification.from_pretrained(tmp_path)
    assert fresh_heads(model, HEADS, str(tmp_path)) == {}
    weight = model.score.weight.detach().clone()
    assert scale_fresh_heads(model, HEADS, str(tmp_path), _batches(loud_llama)) == {}
    assert torch.equal(model.score.weight, weight)


def test_nothing_to_measure_on_keeps_the_head(loud_llama: str) -> None:
    model = LlamaForTokenClassification.from_pretrained(loud_llama, num_labels=3)
    assert set(fresh_heads(model, HEADS, loud_llama)) == {"score"}
    weight = model.score.weight.detach().clone()
    assert scale_fresh_heads(model, HEADS, loud_llama, None) == {}
    assert torch.equal(model.score.weight, weight)
