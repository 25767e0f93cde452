"""Two cheaper routes through transformers' "sdpa" attention, for training on CPU.

Packed rows, one example at a time. A packed training row holds several examples one after
another, told apart by position ids that restart at 0. transformers turns those into a
block-diagonal causal mask, and SDPA then computes the whole row x row score matrix and masks
most of it away: for a 512-token row of four examples, four times the attention work the
examples need. On GPU, flash-attention's variable-length kernel avoids that; CPU and plain
SDPA have no such kernel, so each example's slice of the row goes through SDPA on its own
(causal, no mask), which is the same attention. `LmtuneTrainer.training_step` passes a packed
batch's example boundaries in with `segments(...)`.

Attention dropout with the fast mask. With a dropout rate above zero, CPU SDPA leaves its
fused kernel for the math path and draws the mask with torch's element-by-element
`bernoulli_` (4% of a MiniLM LoRA step). For attention modules whose dropout `fast_dropout.install`
turned into a `FastDropout`, the same math (scores, mask, softmax in fp32, dropout, values) runs
here with `fast_dropout.fast_dropout`.

Everything else (evaluation, generation, unpacked batches, unmarked models, no dropout) goes to
transformers' SDPA unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

_BOUNDS: ContextVar[list[list[tuple[int, int]]] | None] = ContextVar("lmtune_packed_bounds", default=None)
_installed = False


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
    """Within this block, SDPA attention treats each example of the packed rows separately."""
    token = _BOUNDS.set(example_bounds(position_ids))
    try:
        yield
    finally:
        _BOUNDS.reset(token)


def attention_with_fast_dropout(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None = None,
    is_causal: bool | None = None,
) -> torch.Tensor:
    """SDPA's math path ([batch, heads, length, dim] in, [batch, length, heads, dim] out) with
    the attention probabilities dropped out by the fast mask."""
    from lmtune.training.fast_dropout import fast_dropout

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
    probs = fast_dropout(probs, dropout, training=True)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


def _uses_fast_dropout(module: Any) -> bool:
    """Whether fast_dropout.install converted this attention module's dropout (BERT's `dropout`,
    GPT-2's `attn_dropout`): the model trains with the fast mask."""
    from lmtune.training.fast_dropout import FastDropout

    return any(isinstance(child, FastDropout) for child in module.children())


def install() -> None:
    """Route transformers' "sdpa" attention through this module (idempotent, process-wide; the
    wrapper acts only inside `segments` or for attention modules holding a `FastDropout`)."""
    global _installed
    if _installed:
        return
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward as attend

    def _lmtune_sdpa(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        bounds = _BOUNDS.get()
        length = query.shape[2]
        if bounds is not None and key.shape[2] == length and len(bounds) == query.shape[0]:
            kwargs.pop("is_causal", None)
            rows = []
            # unbind and split rather than slicing: their backward passes are one stack / cat,
            # where every slice's backward would write a zero-filled gradient of the whole tensor.
            for row, q, k, v in zip(bounds, query.unbind(0), key.unbind(0), value.unbind(0), strict=True):
                sizes = [end - start for start, end in row]
                pieces = zip(q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1), strict=True)
                parts = [
                    attend(module, q_[None], k_[None], v_[None], None, is_causal=True, **kwargs)[0]
                    for q_, k_, v_ in pieces
                ]
                rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
            return torch.cat(rows, dim=0), None
        dropout = kwargs.get("dropout", 0.0)
        if (
            dropout > 0
            and _uses_fast_dropout(module)
            and query.device.type == "cpu"
            and kwargs.get("position_bias") is None
            and kwargs.get("cache") is None
        ):
            output = attention_with_fast_dropout(
                module,
                query,
                key,
                value,
                attention_mask,
                dropout,
                kwargs.get("scaling"),
                kwargs.get("is_causal"),
            )
            return output, None
        return attend(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("sdpa", _lmtune_sdpa)
    _installed = True
