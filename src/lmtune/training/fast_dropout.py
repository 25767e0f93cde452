"""Dropout with a cheaper random-number generator, for training on CPU.

PyTorch's CPU dropout draws its Bernoulli mask from MT19937, one element after another (about
6 ns per element on 2 cores). For MiniLM LoRA on short sentences that was a third of every
training step, more than the matrix products the dropouts follow. No library ships a faster CPU
dropout, so this one is written here: the mask comes from a counter-based hash (Wellons'
lowbias32) of each element's index, keyed per call by two numbers drawn from torch's own
generator. That is a dozen integer passes that torch vectorises and runs on every core, made
for 2M values at a time and handed out in slices, about 5-10x cheaper than
`torch.nn.functional.dropout`.

Semantics are dropout's: each element is kept with probability 1 - p (p is resolved to 1/65536),
kept elements are scaled by 1 / (1 - p), the backward pass applies the same mask, and evaluation
mode is the identity. Runs stay reproducible under `torch.manual_seed`, and a resumed run that
restores torch's RNG state draws the same masks (`new_step` starts every training step on a
fresh block). The masks differ from the ones stock PyTorch would draw for the same seed. On
GPU, PyTorch's fused Philox dropout is already cheap, so `install` is used for CPU training only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_MULTIPLIERS = (0x7FEB352D, 0x846CA68B - (1 << 32))  # lowbias32's constants, as signed int32
# Random 16-bit values are made in blocks of this many and handed out in slices: one block
# serves the dozens of dropouts of a small model's step, so the dozen integer passes run once
# per block instead of once per dropout call.
POOL_VALUES = 1 << 21
_counter = torch.empty(0, dtype=torch.int32)
_pool: torch.Tensor | None = None
_pool_used = 0


def uniform16(n: int) -> torch.Tensor:
    """`n` fresh int16 values, each uniform on [-32768, 32767] and independent of the others."""
    global _counter
    # One 32-bit hash yields two 16-bit draws, so only half the elements are hashed.
    half = (n + 1) // 2
    if _counter.numel() < half:
        _counter = torch.arange(half, dtype=torch.int32)
    offset, stride = torch.randint(-(2**31), 2**31 - 1, (2,), dtype=torch.int64).tolist()
    # A Weyl sequence with a random odd stride: two draws never see shifted copies of one stream.
    h = torch.mul(_counter[:half], stride | 1)
    h.add_(offset)
    shifted = torch.empty_like(h)
    for shift, multiplier in ((16, _MULTIPLIERS[0]), (15, _MULTIPLIERS[1]), (16, None)):
        # torch's >> on int32 is arithmetic; masking the high bits makes it the logical shift.
        torch.bitwise_right_shift(h, shift, out=shifted)
        shifted.bitwise_and_((1 << (32 - shift)) - 1)
        h.bitwise_xor_(shifted)
        if multiplier is not None:
            h.mul_(multiplier)
    return h.view(torch.int16)[:n]


def _draw(n: int) -> torch.Tensor:
    global _pool, _pool_used
    if n > POOL_VALUES // 4:
        return uniform16(n)
    if _pool is None or _pool_used + n > _pool.numel():
        _pool, _pool_used = uniform16(POOL_VALUES), 0
    values = _pool[_pool_used : _pool_used + n]
    _pool_used += n  # never handed out twice
    return values


def new_step() -> None:
    """Drop the values left in the block. Called at every training step, so a step's masks
    depend only on torch's RNG state when it starts, which a resumed run restores."""
    global _pool
    _pool = None


def keep_mask(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device | None = None
) -> torch.Tensor:
    """A boolean mask of `shape` whose elements are True with probability 1 - p, independently."""
    n = 1
    for size in shape:
        n *= size
    mask = (_draw(n) >= -32768 + round(p * 65536)).view(shape)
    return mask if device is None or device.type == "cpu" else mask.to(device)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)  # a bool per element, as torch's own dropout keeps
        ctx.scale = 1.0 / (1.0 - p)
        return torch.mul(x, keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`torch.nn.functional.dropout` with the hash-based mask (not in place)."""
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    return _MaskedScale.apply(x, p)


class FastDropout(nn.Dropout):
    """`nn.Dropout` drawing its mask with `keep_mask`; a drop-in replacement (same `p`, no weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def install(model: nn.Module) -> int:
    """Make every `nn.Dropout` in `model` a `FastDropout` with the same rate, and its SDPA
    attention-probability dropout use the same mask (training/attention.py); returns how many
    dropout modules changed.

    The instances change class in place rather than being replaced: methods hang things on
    dropout modules (bottleneck adapters are children and forward hooks of BERT's output
    dropouts), and those must stay where they are.
    """
    from lmtune.training import attention

    attention.install()
    replaced = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            replaced += 1
    return replaced
