"""The hash-based CPU dropout: dropout's distribution, scaling and gradient, reproducible masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmtune.training.fast_dropout import FastDropout, fast_dropout, install, keep_mask, new_step


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    keep = keep_mask((1_000_003,), p).float()
    # 5 standard errors of a Bernoulli mean over 1M draws.
    assert abs(keep.mean().item() - (1 - p)) < 5 * ((p * (1 - p)) / keep.numel()) ** 0.5


def test_neighbouring_elements_and_successive_calls_are_uncorrelated():
    torch.manual_seed(0)
    a = keep_mask((1_000_000,), 0.5).float()
    b = keep_mask((1_000_000,), 0.5).float()
    tolerance = 5 / 1000  # 5 standard errors of a correlation over 1M pairs
    for x, y in ((a[:-1], a[1:]), (a[:-2], a[2:]), (a, b), (a[:-1], b[1:])):
        assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1].item()) < tolerance
    # Both 16-bit halves of each hash: even and odd positions behave alike.
    assert abs(a[0::2].mean().item() - a[1::2].mean().item()) < 0.005


def test_a_steps_masks_follow_torch_seed_and_never_repeat():
    torch.manual_seed(7)
    new_step()
    first = [keep_mask((4, 33), 0.3), keep_mask((50,), 0.5)]
    torch.manual_seed(7)
    new_step()
    assert all(torch.equal(keep_mask(m.shape, p), m) for m, p in zip(first, (0.3, 0.5), strict=True))
    assert not torch.equal(keep_mask((4, 33), 0.3), first[0])
    # Values handed out from one block are never handed out again.
    new_step()
    a, b = [keep_mask((1000,), 0.5) for _ in range(2)]
    assert not torch.equal(a, b)


def test_output_and_gradient_are_dropouts():
    torch.manual_seed(0)
    x = torch.randn(8, 50, requires_grad=True)
    y = fast_dropout(x, 0.25)
    kept = y != 0
    assert 0.6 < kept.float().mean().item() < 0.9
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)


def test_bf16_inputs_stay_bf16():
    x = torch.randn(16, 16, dtype=torch.bfloat16)
    assert fast_dropout(x, 0.1).dtype == torch.bfloat16


def test_evaluation_and_zero_rate_are_the_identity():
    x = torch.randn(3, 5)
    assert fast_dropout(x, 0.5, training=False) is x
    assert fast_dropout(x, 0.0) is x
    module = FastDropout(0.5).eval()
    assert module(x) is x


def test_install_replaces_every_dropout_and_keeps_its_rate(minilm_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    # peft's LoRA dropouts are nn.Dropout modules too.
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_dropout=0.2))
    rates = [m.p for m in model.modules() if type(m) is nn.Dropout]
    assert rates
    model.eval()
    x = torch.randint(5, 90, (2, 7))
    before = model(input_ids=x).logits
    assert install(model) == len(rates)
    assert [m.p for m in model.modules() if isinstance(m, FastDropout)] == rates
    assert not any(type(m) is nn.Dropout for m in model.modules())
    torch.testing.assert_close(model(input_ids=x).logits, before)
    # Hooks and children on a dropout module (where bottleneck adapters live) stay attached.
    site = model.base_model.model.bert.encoder.layer[0].output.dropout
    assert isinstance(site, FastDropout)
    model.train()
    torch.manual_seed(1)
    noisy = model(input_ids=x).logits
    assert not torch.allclose(noisy, before)
