"""Shape buckets: round each batch's sequence length up to a multiple, so a compiled step sees few shapes.

Padding every batch up to a multiple of `multiple` (`train.pad_to_multiple_of`) bounds the shapes a
step sees at max_length / multiple, for at most multiple - 1 padded positions a row, which the
attention mask hides from the real ones: for backends that specialise on shapes, or kernels that
want aligned lengths (tensor cores: 8). It is off by default: with `torch.compile` on CPU, dynamo
switched to dynamic shapes after the second length and buckets of 16 saved no graphs, while their
padding cost 22% of an eager MiniLM step (benchmarks/compile_buckets.py).

transformers' collators take `pad_to_multiple_of`, but each task builds its own collator (some not
from transformers), so this wraps whichever collator the task gives and pads the keys whose padding
value it knows. A batch with any other tensor of the sequence's length is left as it is: padding a
key whose meaning is unknown could change the result, and an unbucketed batch only costs a compile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

# Padding values of the keys the tasks' collators produce; input_ids take the tokenizer's pad id.
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": -100, "position_ids": 0}


def bucketed_length(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`."""
    return -(-length // multiple) * multiple


def pad_batch_to_bucket(batch: Any, multiple: int, pad_token_id: int, side: str = "right") -> Any:
    """`batch` with every known [rows, length] tensor padded to the bucketed length (in place for
    a dict or BatchEncoding); unchanged if it has no input_ids, is already bucketed, or holds a
    tensor of that length whose padding value is unknown."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return batch
    rows, length = ids.shape
    target = bucketed_length(length, multiple)
    if target == length:
        return batch
    values = {"input_ids": pad_token_id, **_PAD_VALUES}
    sequence_keys = [
        key
        for key, value in batch.items()
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (rows, length)
    ]
    if any(key not in values or batch[key].dim() != 2 for key in sequence_keys):
        return batch
    for key in sequence_keys:
        tensor = batch[key]
        pad = tensor.new_full((rows, target - length), values[key])
        batch[key] = torch.cat([pad, tensor] if side == "left" else [tensor, pad], dim=1)
    return batch


class BucketedCollator:
    """The task's collator, then `pad_batch_to_bucket`; other attributes (the task's training
    sampler, for one) are the wrapped collator's."""

    def __init__(self, collator: Callable[[list[Any]], Any], multiple: int, tokenizer: Any) -> None:
        self.collator = collator
        self.multiple = multiple
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None) or 0
        self.side = getattr(tokenizer, "padding_side", "right")

    def __call__(self, features: list[Any]) -> Any:
        return pad_batch_to_bucket(self.collator(features), self.multiple, self.pad_token_id, self.side)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this wrapper lacks; `collator` itself is looked up normally
        # (guarded so that copying or unpickling, before __init__ ran, does not recurse).
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)
