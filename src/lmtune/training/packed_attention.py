"""Attention over packed rows, one example at a time, for SDPA without variable-length kernels.

A packed training row holds several examples one after another, told apart by position ids
that restart at 0. transformers turns those into a block-diagonal causal mask, and SDPA then
computes the whole row x row score matrix and masks most of it away: for a 512-token row of
four examples, four times the attention work that the examples need. On GPU, flash-attention's
variable-length kernel avoids that; CPU and plain SDPA have no such kernel, so here each
example's slice of the row goes through SDPA on its own (causal, no mask), which is the
same attention.

It is switched on per batch: `LmtuneTrainer.training_step` passes the example boundaries of a
packed batch in with `segments(...)`; every other forward (evaluation, generation, unpacked
batches) goes to transformers' SDPA unchanged.
"""

from __future__ import annotations

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


def install() -> None:
    """Route transformers' "sdpa" attention through `_segment_sdpa` (idempotent, process-wide;
    the wrapper only acts inside `segments`)."""
    global _installed
    if _installed:
        return
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward as attend

    def _segment_sdpa(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        bounds = _BOUNDS.get()
        length = query.shape[2]
        if bounds is None or key.shape[2] != length or len(bounds) != query.shape[0]:
            return attend(module, query, key, value, attention_mask, **kwargs)
        kwargs.pop("is_causal", None)
        rows = []
        # unbind and split rather than slicing: their backward passes are one stack / cat, where
        # every slice's backward would write a zero-filled gradient of the whole tensor.
        for row, q, k, v in zip(bounds, query.unbind(0), key.unbind(0), value.unbind(0), strict=True):
            sizes = [end - start for start, end in row]
            pieces = zip(q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1), strict=True)
            parts = [
                attend(module, q_[None], k_[None], v_[None], None, is_causal=True, **kwargs)[0]
                for q_, k_, v_ in pieces
            ]
            rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0), None

    AttentionInterface.register("sdpa", _segment_sdpa)
    _installed = True
