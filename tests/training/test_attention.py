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
    monkeypatch.setattr(fast_dropout, "fast_dropout", lambda x, p, training=True, rng=None: x)
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

    rngs = []

    def counting(*args, **kwargs):
        calls.append(args[0])
        rngs.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "attention_with_fast_dropout", counting)
    ids = torch.randint(1000, 2000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    model.eval()
    expected = model(input_ids=ids, attention_mask=mask).logits
    fast_dropout.install(model)
    with attention.routed(model) as routed:
        assert routed and model.config._attn_implementation == attention.ROUTE
        assert model(input_ids=ids, attention_mask=mask).logits.allclose(expected, atol=1e-5)
        assert not calls  # evaluation: transformers' SDPA, unchanged
        model.train()
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss
        loss.backward()
    assert len(calls) == model.config.num_hidden_layers and torch.isfinite(loss)
    # The masks come from the model's own generator.
    assert {id(kwargs["rng"]) for kwargs in rngs} == {id(fast_dropout.rng_of(model))}
    # Outside the block the model is plain "sdpa" again, and its dropout no longer takes the route.
    assert model.config._attn_implementation == "sdpa"
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
    assert len(calls) == model.config.num_hidden_layers


def test_packed_rows_attend_per_example_with_the_same_loss_and_gradients(smollm, monkeypatch):
    from lmtune.tasks.causal_lm import CausalLmCollator

    model, tokenizer = smollm
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
            with attention.routed(model), attention.segments(batch["position_ids"]):
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


def test_the_route_has_its_own_name_and_sdpa_stays_transformers():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
    assert ALL_ATTENTION_FUNCTIONS[attention.ROUTE] is attention.lmtune_sdpa
    # The route builds SDPA's masks (padding masks included), so outputs are transformers' own.
    assert ALL_MASK_ATTENTION_FUNCTIONS[attention.ROUTE] is sdpa_mask


def test_routing_sets_only_the_given_model_and_restores_it(minilm_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    other = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    eager = AutoModelForSequenceClassification.from_pretrained(
        minilm_path, num_labels=2, attn_implementation="eager"
    )
    ids = torch.randint(1000, 2000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    model.eval()
    expected = model(input_ids=ids, attention_mask=mask).logits
    with attention.routed(model) as routed, attention.routed(eager) as eager_routed:
        assert routed and not eager_routed
        assert model.config._attn_implementation == attention.ROUTE
        assert other.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)
    assert model.config._attn_implementation == "sdpa"


def test_segments_are_per_thread():
    import threading

    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other_thread():
        seen["other before"] = attention._BOUNDS.get()
        with attention.segments(torch.tensor([[0, 1, 0]])):
            inside.set()
            release.wait(timeout=30)
            seen["other inside"] = attention._BOUNDS.get()

    with attention.segments(torch.tensor([[0, 1, 2, 3]])):
        thread = threading.Thread(target=other_thread)
        thread.start()
        assert inside.wait(timeout=30)
        seen["mine"] = attention._BOUNDS.get()
        release.set()
        thread.join(timeout=30)
    assert seen["other before"] is None
    assert seen["other inside"] == [[(0, 2), (2, 3)]]
    assert seen["mine"] == [[(0, 4)]]
    assert attention._BOUNDS.get() is None
