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
