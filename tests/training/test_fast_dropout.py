"""The hash-based CPU dropout: dropout's distribution, scaling and gradient, reproducible masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmtune.training.fast_dropout import (
    DropoutRng,
    FastDropout,
    fast_dropout,
    install,
    keep_mask,
    rng_of,
    step_key,
)


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


def test_keyed_blocks_of_neighbouring_steps_are_uncorrelated():
    """Keys of consecutive steps differ in one input bit; their masks must still be independent."""
    rng = DropoutRng()
    masks = []
    for step, micro in ((0, 0), (1, 0), (0, 1)):
        rng.start_step(seed=42, step=step, micro_step=micro)
        # Many small draws from one block, as a step's dropouts make them.
        masks.append(torch.cat([keep_mask((1000,), 0.5, rng=rng) for _ in range(500)]).float())
    tolerance = 5 / 500_000**0.5
    for x, y in ((masks[0], masks[1]), (masks[0], masks[2]), (masks[0][:-1], masks[0][1:])):
        assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1].item()) < tolerance
    assert abs(masks[0].mean().item() - 0.5) < tolerance


def test_a_steps_masks_follow_its_key_and_never_repeat():
    rng = DropoutRng()
    rng.start_step(seed=7, step=3)
    first = [keep_mask((4, 33), 0.3, rng=rng), keep_mask((50,), 0.5, rng=rng)]
    # Another generator keyed by the same step draws the same masks, whatever torch's global RNG.
    torch.manual_seed(123)
    again = DropoutRng()
    again.start_step(seed=7, step=3)
    assert all(
        torch.equal(keep_mask(m.shape, p, rng=again), m) for m, p in zip(first, (0.3, 0.5), strict=True)
    )
    # Values handed out from one block are never handed out again.
    assert not torch.equal(keep_mask((4, 33), 0.3, rng=rng), first[0])
    # Another step, micro-step, process or seed: other masks.
    for other in ((7, 4, 0, 0), (7, 3, 1, 0), (7, 3, 0, 1), (8, 3, 0, 0)):
        rng.start_step(*other)
        assert not torch.equal(keep_mask((4, 33), 0.3, rng=rng), first[0]), other
    assert len({step_key(7, s, m) for s in range(100) for m in range(4)}) == 400
    # Draws bigger than a quarter block bypass the block, still keyed.
    rng.start_step(7, 3)
    big = keep_mask((1_000_000,), 0.5, rng=rng)
    again.start_step(7, 3)
    assert torch.equal(keep_mask((1_000_000,), 0.5, rng=again), big)


def test_without_a_generator_masks_follow_torch_seed():
    torch.manual_seed(7)
    first = keep_mask((4, 33), 0.3)
    torch.manual_seed(7)
    assert torch.equal(keep_mask((4, 33), 0.3), first)
    assert not torch.equal(keep_mask((4, 33), 0.3), first)
    torch.manual_seed(7)
    a = DropoutRng()
    torch.manual_seed(7)
    assert DropoutRng().key == a.key


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
    # One generator for the whole model, its own: another model gets another one.
    rng = rng_of(model)
    assert isinstance(rng, DropoutRng)
    assert all(m.rng is rng for m in model.modules() if isinstance(m, FastDropout))
    other = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    install(other)
    assert rng_of(other) is not rng and rng_of(other) is not None
    assert not any(type(m) is nn.Dropout for m in model.modules())
    torch.testing.assert_close(model(input_ids=x).logits, before)
    # Hooks and children on a dropout module (where bottleneck adapters live) stay attached.
    site = model.base_model.model.bert.encoder.layer[0].output.dropout
    assert isinstance(site, FastDropout)
    model.train()
    torch.manual_seed(1)
    noisy = model(input_ids=x).logits
    assert not torch.allclose(noisy, before)


def test_activation_checkpointing_trains_with_torchs_dropout(tmp_path):
    """A recomputed checkpointed block would draw other fast masks than its forward did: the
    trainer puts torch's dropout back, whose RNG state checkpointing restores."""
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    from lmtune.training.trainer import LmtuneTrainer

    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
        )
    )
    count = install(model)
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, activation_checkpointing=True
    )
    trainer = LmtuneTrainer(model=model, args=args)
    assert trainer.dropout_rng is None and rng_of(model) is None
    assert sum(type(m) is nn.Dropout for m in model.modules()) == count
    assert not any(isinstance(m, FastDropout) for m in model.modules())
