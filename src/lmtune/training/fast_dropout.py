"""Dropout with a cheaper random-number generator, for training on CPU.

PyTorch's CPU dropout draws its Bernoulli mask from MT19937, one element after another (about
6 ns per element on 2 cores). For MiniLM LoRA on short sentences that was a third of every
training step, more than the matrix products the dropouts follow. No library ships a faster CPU
dropout, so this one is written here: the mask comes from a counter-based hash (Wellons'
lowbias32) of each element's index, keyed per block by two numbers. That is a dozen integer
passes that torch vectorises and runs on every core, made for 2M values at a time and handed
out in slices, about 5-10x cheaper than `torch.nn.functional.dropout`.

Semantics are dropout's: each element is kept with probability 1 - p (p is resolved to 1/65536),
kept elements are scaled by 1 / (1 - p), the backward pass applies the same mask, and evaluation
mode is the identity. The masks differ from the ones stock PyTorch would draw for the same seed.

Where the randomness lives: `install` gives the model one `DropoutRng`, shared by its dropout
modules and nothing else, and the trainer starts every training step on a fresh block keyed by
(seed, step, micro-step, process). A step's masks are a function of those numbers alone, so a
resumed run draws the same masks, and two trainings in one process (sweep trials in threads)
never share or race on a generator, not even on torch's global one. On GPU, PyTorch's fused Philox
dropout is already cheap, so `install` is used for CPU training only.
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


def uniform16(
    n: int, key: tuple[int, int] | None = None, counter: torch.Tensor | None = None
) -> torch.Tensor:
    """`n` fresh int16 values, each uniform on [-32768, 32767] and independent of the others.

    `key` is the hash's (offset, stride), two int32 values; when None they are drawn from torch's
    global RNG. `counter`, if given, is a cached `arange` of at least (n + 1) // 2 int32 values.
    """
    # One 32-bit hash yields two 16-bit draws, so only half the elements are hashed.
    half = (n + 1) // 2
    if counter is None or counter.numel() < half:
        counter = torch.arange(half, dtype=torch.int32)
    if key is None:
        key = tuple(torch.randint(-(2**31), 2**31 - 1, (2,), dtype=torch.int64).tolist())
    offset, stride = key
    # A Weyl sequence with a random odd stride: two draws never see shifted copies of one stream.
    h = torch.mul(counter[:half], stride | 1)
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


def _mix64(x: int) -> int:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    x = (x + 0x9E3779B97F4A7C15) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return x ^ (x >> 31)


def step_key(seed: int, step: int, micro_step: int = 0, process: int = 0) -> int:
    """The 64-bit key of one training step's blocks (a function of its numbers alone)."""
    key = 0
    for value in (seed, step, micro_step, process):
        key = _mix64(key ^ (value % 2**64))
    return key


def _int32(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


class DropoutRng:
    """The random values of one model's fast dropouts: a key and the block it hands out.

    Counter-based: block b of a step hashes with (offset, stride) = mix(key, b), so nothing but
    the key and a block count is state. Not shared between models and not thread-safe: one
    model trains in one thread. Until `start_step` keys it, the key comes from torch's global RNG
    at creation (`torch.manual_seed` before `install` makes a hand-written loop reproducible).
    """

    def __init__(self, key: int | None = None) -> None:
        self.key = int(torch.randint(0, 2**62, ())) if key is None else key
        self._blocks = 0
        self._counter = torch.arange(POOL_VALUES // 2, dtype=torch.int32)
        self._block: torch.Tensor | None = None
        self._used = 0

    def start_step(self, seed: int, step: int, micro_step: int = 0, process: int = 0) -> None:
        """Drop the values left in the block and key the next ones by the step: a step's masks
        then depend only on these numbers, which a resumed run reproduces."""
        self.key = step_key(seed, step, micro_step, process)
        self._blocks = 0
        self._block = None

    def _next_key(self) -> tuple[int, int]:
        mixed = _mix64(self.key ^ _mix64(self._blocks))
        self._blocks += 1
        return _int32(mixed % 2**32), _int32(mixed >> 32)

    def draw(self, n: int) -> torch.Tensor:
        """`n` int16 values from the block (never handed out twice), or fresh ones for a big `n`."""
        if n > POOL_VALUES // 4:
            return uniform16(n, self._next_key())
        if self._block is None or self._used + n > self._block.numel():
            self._block, self._used = uniform16(POOL_VALUES, self._next_key(), self._counter), 0
        values = self._block[self._used : self._used + n]
        self._used += n
        return values


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    device: torch.device | None = None,
    rng: DropoutRng | None = None,
) -> torch.Tensor:
    """A boolean mask of `shape` whose elements are True with probability 1 - p, independently
    (drawn from `rng`, or from torch's global RNG when None)."""
    n = 1
    for size in shape:
        n *= size
    values = rng.draw(n) if rng is not None else uniform16(n)
    mask = (values >= -32768 + round(p * 65536)).view(shape)
    return mask if device is None or device.type == "cpu" else mask.to(device)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float, rng: DropoutRng | None) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device, rng)
        ctx.save_for_backward(keep)  # a bool per element, as torch's own dropout keeps
        ctx.scale = 1.0 / (1.0 - p)
        return torch.mul(x, keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None, None


def fast_dropout(
    x: torch.Tensor, p: float, training: bool = True, rng: DropoutRng | None = None
) -> torch.Tensor:
    """`torch.nn.functional.dropout` with the hash-based mask (not in place)."""
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    return _MaskedScale.apply(x, p, rng)


class FastDropout(nn.Dropout):
    """`nn.Dropout` drawing its mask with `keep_mask` from its model's `rng`; a drop-in
    replacement (same `p`, no weights)."""

    rng: DropoutRng | None = None  # `install` sets the model's; a lone module uses torch's RNG

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training, self.rng)


def install(model: nn.Module, rng: DropoutRng | None = None) -> int:
    """Make every `nn.Dropout` in `model` a `FastDropout` with the same rate, all drawing from one
    `DropoutRng` (`rng`, or a new one) that belongs to this model; returns how many dropout
    modules changed. The trainer finds the generator with `rng_of(model)`, and the attention
    route (training/attention.py) drops attention probabilities with the same masks.

    The instances change class in place rather than being replaced: methods hang things on
    dropout modules (bottleneck adapters are children and forward hooks of BERT's output
    dropouts), and those must stay where they are.
    """
    rng = rng if rng is not None else DropoutRng()
    replaced = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            replaced += 1
        if isinstance(module, FastDropout):
            module.rng = rng
    return replaced


def uninstall(model: nn.Module) -> int:
    """Turn `install`'s `FastDropout` modules back into `nn.Dropout` (same rate, same place);
    returns how many changed."""
    restored = 0
    for module in model.modules():
        if isinstance(module, FastDropout):
            module.__dict__.pop("rng", None)
            module.__class__ = nn.Dropout
            restored += 1
    return restored


def rng_of(model: nn.Module) -> DropoutRng | None:
    """The generator `install` gave `model`'s dropouts (None if it has no fast dropout)."""
    return next((m.rng for m in model.modules() if isinstance(m, FastDropout) and m.rng is not None), None)
