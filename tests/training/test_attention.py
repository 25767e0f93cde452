"""The attention routes: SDPA's math with the fast dropout mask, and per-example packed rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmtune.training import attention, fast_dropout


def sdpa_reference(query, key, value, mask, is_causal):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, mask, is_causal=is_causal)
    return out.transpose(1, 2)


@pytest.mark.parametrize("case", ["bool-padding", "additive", "causal-gqa"])
def test_math_path_equals_sdpa_when_nothing_is_dropped(case, monkeypatch):
    monkeypatch.setattr(fast_dropout, "fast_dropout", lambda x, p, training=True: x)
    torch.manual_seed(0)
    kv_heads = 2 if case == "causal-gqa" else 4
    q = torch.randn(2, 4, 6, 8)
    k, v = torch.randn(2, kv_heads, 6, 8), torch.randn(2, kv_heads, 6, 8)
    mask, causal = None, case == "causal-gqa"
    if case == "bool-padding":
        mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
        mask[1, :, :, 4:] = False  # the second row's last two keys are padding
    elif case == "additive":
        mask = torch.randn(2, 1, 6, 6)
    module = nn.Module()
    module.is_causal = causal
    got = attention.attention_with_fast_dropout(module, q, k, v, mask, 0.1)
    torch.testing.assert_close(got, sdpa_reference(q, k, v, mask, causal), rtol=1e-5, atol=1e-6)


def test_probabilities_are_dropped_and_rescaled():
    torch.manual_seed(0)
    q = torch.zeros(1, 1, 4, 8)  # equal scores: every probability is 1/4
    v = torch.eye(4).reshape(1, 1, 4, 4)
    out = attention.attention_with_fast_dropout(nn.Module(), q, q.clone(), v, None, 0.5)
    values = set(out.flatten().tolist())
    assert values <= {0.0, 0.5} and values == {0.0, 0.5}  # 1/4 kept and scaled by 2, or 0


@pytest.fixture(scope="module")
def smollm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.models import resolve_model

    path = resolve_model("SmolLM2-135M-Instruct").path
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_a_marked_bert_in_training_takes_the_fast_route(minilm_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    calls = []
    original = attention.attention_with_fast_dropout

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "attention_with_fast_dropout", counting)
    ids = torch.randint(1000, 2000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    model.eval()
    expected = model(input_ids=ids, attention_mask=mask).logits
    fast_dropout.install(model)
    assert model(input_ids=ids, attention_mask=mask).logits.allclose(expected, atol=1e-5)
    assert not calls  # evaluation: transformers' SDPA, unchanged
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert len(calls) == model.config.num_hidden_layers and torch.isfinite(loss)


def test_packed_rows_attend_per_example_with_the_same_loss_and_gradients(smollm, monkeypatch):
    from lmtune.tasks.causal_lm import CausalLmCollator

    model, tokenizer = smollm
    attention.install()
    texts = ["Blue, like the sky.", "Four.", "A longer third example, to fill the row a bit more.", "Hi"]
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    rows = [encoded[:3], encoded[3:]]  # 3 examples in one row, 1 in the other (padded)
    features = [
        {
            "input_ids": [t for ids in row for t in ids],
            "labels": [t for ids in row for t in ids],
            "position_ids": [p for ids in row for p in range(len(ids))],
        }
        for row in rows
    ]
    batch = CausalLmCollator(tokenizer.pad_token_id or 0)(features)
    assert attention.example_bounds(batch["position_ids"])[0] == [
        (0, len(encoded[0])),
        (len(encoded[0]), len(encoded[0]) + len(encoded[1])),
        (len(encoded[0]) + len(encoded[1]), sum(len(e) for e in encoded[:3])),
    ]
    model.eval()  # no dropout either way; gradients still flow
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is None)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)

    def loss_and_grad(per_example: bool):
        model.zero_grad()
        if per_example:
            with attention.segments(batch["position_ids"]):
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss  # transformers' block-diagonal mask over the whole row
        loss.backward()
        return loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    masked = loss_and_grad(False)
    layers = len(model.model.layers)
    assert len(calls) == layers and not any(calls)  # one masked call per layer
    calls.clear()
    per_example = loss_and_grad(True)
    # Row 1: three examples; row 2: one example and its padding. No mask anywhere.
    assert len(calls) == 5 * layers and all(calls)
    torch.testing.assert_close(per_example[0], masked[0], rtol=1e-5, atol=1e-6)
    scale = masked[1].abs().max().item()
    torch.testing.assert_close(per_example[1], masked[1], rtol=1e-4, atol=1e-5 * scale)
    model.zero_grad()
