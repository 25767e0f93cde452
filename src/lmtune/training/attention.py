"""lmtune's attention route: transformers' "sdpa" with two cheaper paths, for models lmtune trains.

The route is registered with transformers under its own name, `ROUTE` ("lmtune_sdpa", with
SDPA's mask builder), and set only on the model being trained, only while it trains
(`routed(model)`, used by `LmtuneTrainer.train`); every other model in the process, and the
trained one afterwards, keeps transformers' own "sdpa". It differs from "sdpa" in two places:

Packed rows, one example at a time. A packed training row holds several examples one after
another, told apart by position ids that restart at 0. transformers turns those into a
block-diagonal causal mask, and SDPA then computes the whole row x row score matrix and masks
most of it away: for a 512-token row of four examples, four times the attention work the
examples need. On GPU, flash-attention's variable-length kernel avoids that; CPU and plain
SDPA have no such kernel, so each example's slice of the row goes through SDPA on its own
(causal, no mask), which is the same attention. `LmtuneTrainer.training_step` passes a packed
batch's example boundaries in with `segments(...)`, held in a context variable: each thread
(and asyncio task) sees only its own, so trainings in parallel threads never see each other's.

Attention dropout with the fast mask. With a dropout rate above zero, CPU SDPA leaves its
fused kernel for the math path and draws the mask with torch's element-by-element
`bernoulli_` (4% of a MiniLM LoRA step). For attention modules whose dropout
`fast_dropout.install` turned into a `FastDropout`, the same math (scores, mask, softmax in
fp32, dropout, values) runs here with `fast_dropout.fast_dropout`, from that model's generator.

Everything else (evaluation, generation, unpacked batches, no dropout) goes to transformers'
SDPA unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from lmtune.training import fast_dropout

ROUTE = "lmtune_sdpa"

_BOUNDS: ContextVar[list[list[tuple[int, int]]] | None] = ContextVar("lmtune_packed_bounds", default=None)


def example_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each example: a new one starts wherever the position is 0."""
    bounds = []
    for row in position_ids.cpu():
        starts = torch.nonzero(row == 0).flatten().tolist()
        if not starts or starts[0] != 0:
            starts = [0, *starts]
        ends = [*starts[1:], row.numel()]
        bounds.append(list(zip(starts, ends, strict=True)))
    return bounds


@contextmanager
def segments(position_ids: torch.Tensor) -> Iterator[None]:
    """Within this block (in this thread), routed causal attention treats each example of the
    packed rows separately."""
    token = _BOUNDS.set(example_bounds(position_ids))
    try:
        yield
    finally:
        _BOUNDS.reset(token)


def pretrained_model(model: Any) -> Any:
    """The transformers model inside `model` (a peft or DDP wrapper, or the model itself), or None."""
    if isinstance(model, PreTrainedModel):
        return model
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    return next((m for m in modules if isinstance(m, PreTrainedModel)), None)


@contextmanager
def routed(model: Any) -> Iterator[bool]:
    """Within this block, `model`'s SDPA attention goes through `ROUTE`; yields whether it does
    (models on another attention implementation, or that cannot switch, are left alone)."""
    inner = pretrained_model(model)
    config = getattr(inner, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not inner._can_set_attn_implementation():
        yield False
        return
    inner.set_attn_implementation(ROUTE)
    try:
        yield True
    finally:
        inner.set_attn_implementation("sdpa")


def attention_with_fast_dropout(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None = None,
    is_causal: bool | None = None,
    rng: fast_dropout.DropoutRng | None = None,
) -> torch.Tensor:
    """SDPA's math path ([batch, heads, length, dim] in, [batch, length, heads, dim] out) with
    the attention probabilities dropped out by the fast mask (drawn from `rng`)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is not None:
        mask = attention_mask[..., :k_len]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    elif q_len > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", False)):
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        scores = scores.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = fast_dropout.fast_dropout(probs, dropout, training=True, rng=rng)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


def _fast_dropout_of(module: Any) -> fast_dropout.FastDropout | None:
    """The attention module's dropout if fast_dropout.install converted it (BERT's `dropout`,
    GPT-2's `attn_dropout`): the model trains with the fast mask."""
    return next((c for c in module.children() if isinstance(c, fast_dropout.FastDropout)), None)


def _per_example(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: Any, **kwargs: Any
) -> torch.Tensor:
    """Causal SDPA over each example's slice of each packed row, without a mask."""
    kwargs.pop("is_causal", None)
    rows = []
    # unbind and split rather than slicing: their backward passes are one stack / cat, where
    # every slice's backward would write a zero-filled gradient of the whole tensor.
    for row, q, k, v in zip(bounds, query.unbind(0), key.unbind(0), value.unbind(0), strict=True):
        sizes = [end - start for start, end in row]
        pieces = zip(q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1), strict=True)
        parts = [
            sdpa_attention_forward(module, q_[None], k_[None], v_[None], None, is_causal=True, **kwargs)[0]
            for q_, k_, v_ in pieces
        ]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0)


def lmtune_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The `ROUTE` attention function: per example inside `segments`, the fast dropout for
    modules holding a `FastDropout`, transformers' SDPA otherwise."""
    bounds = _BOUNDS.get()
    # Only causal attention: transformers reads packed rows from position ids for causal masks.
    if (
        bounds is not None
        and getattr(module, "is_causal", False)
        and key.shape[2] == query.shape[2]
        and len(bounds) == query.shape[0]
    ):
        return _per_example(module, query, key, value, bounds, **kwargs), None
    dropout = kwargs.get("dropout", 0.0)
    site = _fast_dropout_of(module) if dropout > 0 and query.device.type == "cpu" else None
    if site is not None and kwargs.get("position_bias") is None and kwargs.get("cache") is None:
        output = attention_with_fast_dropout(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout,
            kwargs.get("scaling"),
            kwargs.get("is_causal"),
            rng=site.rng,
        )
        return output, None
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


# A new name in transformers' registries, not a replacement of "sdpa": only models switched to
# it by `routed` use it. Registering the same function under the same name again is harmless.
AttentionInterface.register(ROUTE, lmtune_sdpa)
AttentionMaskInterface.register(ROUTE, sdpa_mask)
