"""Cached frozen activations: compute the frozen bottom of a model once, reuse it every epoch.

When the embeddings and the bottom layers are frozen (`freeze`, head-only training), their
output for a given input never changes, yet a normal training loop recomputes it at every
step of every epoch. This cache stores the output of the last frozen layer per example the
first time it is computed and, from then on, replays it: the frozen layers below return at
once and the last one returns the stored states, so later epochs only run the trainable top.
No library offers this for Trainer-based fine-tuning, hence this module.

Design choices:
- Keys are the example's token ids (up to its attention-mask length), so no index column
  is needed and duplicate texts share an entry; a batch is replayed only when every row in
  it is cached (the first epoch records, the next ones replay).
- The frozen prefix runs in eval mode (no dropout), always: a cached value must equal a
  recomputed one. This is the one training difference from uncached `freeze`, where
  dropout still perturbs the frozen layers' outputs.
- States are kept unpadded, in the model's dtype, up to `max_mb` megabytes; rows beyond the
  budget are simply recomputed.
- Nothing is wrapped or renamed: the layers' `forward` is patched on the instances, so the
  state dict and the saved model are exactly those of the uncached model.
- Batches without an attention mask (packed causal-LM rows) are never cached.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


class FrozenActivationCache:
    """Per-example outputs of the last frozen layer, keyed by the example's token ids."""

    def __init__(self, max_mb: float) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self.used_bytes = 0
        self.store: dict[bytes, torch.Tensor] = {}
        self.keys: list[bytes] | None = None
        self.mask: torch.Tensor | None = None
        self.replay = False
        self.hits = 0
        self.misses = 0

    def begin_batch(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        """Called before every forward: decide whether this batch replays the cache."""
        if input_ids is None or attention_mask is None or attention_mask.dim() != 2:
            self.keys, self.replay = None, False
            return
        ids = input_ids.cpu()
        self.mask = attention_mask.bool()
        mask = self.mask.cpu()
        self.keys = [ids[i][mask[i]].numpy().tobytes() for i in range(ids.shape[0])]
        self.replay = all(key in self.store for key in self.keys)
        if self.replay:
            self.hits += len(self.keys)
        else:
            self.misses += len(self.keys)

    def replayed(self, like: torch.Tensor) -> torch.Tensor:
        """The batch's stored states at its real positions (left or right padding); zeros elsewhere."""
        assert self.keys is not None and self.mask is not None
        out = like.new_zeros(like.shape)
        for i, key in enumerate(self.keys):
            out[i][self.mask[i]] = self.store[key].to(out.dtype)
        return out

    def record(self, hidden: torch.Tensor) -> None:
        if self.keys is None or self.mask is None:
            return
        for i, key in enumerate(self.keys):
            if key in self.store:
                continue
            states = hidden[i][self.mask[i]].detach().clone()
            size = states.numel() * states.element_size()
            if self.used_bytes + size > self.max_bytes:
                return
            self.store[key] = states
            self.used_bytes += size


def _always_eval(module: nn.Module) -> None:
    """Keep `module` (and what it holds) in eval mode whatever `model.train()` asks."""

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        return nn.Module.train(self, False)

    module.train = types.MethodType(train, module)  # type: ignore[method-assign]
    module.eval()


def _below_the_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that run before the first layer and may hold dropout: the embeddings block
    (BERT family: word + position embeddings, LayerNorm, dropout) and dropout modules placed
    directly in the base model (GPT-2's `drop`). The head's dropout is left alone."""
    base = getattr(model, "base_model", model)
    found: list[nn.Module] = []
    embeddings = getattr(base, "embeddings", None)
    if isinstance(embeddings, nn.Module):
        found.append(embeddings)
    found += [m for m in base.children() if isinstance(m, nn.Dropout)]
    input_embeddings = model.get_input_embeddings()
    if isinstance(input_embeddings, nn.Module):
        found.append(input_embeddings)
    return found


def attach(model: nn.Module, frozen_layers: list[nn.Module], max_mb: float) -> FrozenActivationCache:
    """Make `frozen_layers` (the bottom of the stack, in order) replay from a cache; returns it."""
    cache = FrozenActivationCache(max_mb)
    last = len(frozen_layers) - 1
    for module in (*_below_the_layers(model), *frozen_layers):
        _always_eval(module)

    def before_forward(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache.begin_batch(input_ids, kwargs.get("attention_mask"))

    model.register_forward_pre_hook(before_forward, with_kwargs=True)

    for index, layer in enumerate(frozen_layers):
        original = layer.forward

        def forward(
            self: nn.Module,
            hidden_states: torch.Tensor,
            *args: Any,
            _original: Any = original,
            _index: int = index,
            **kwargs: Any,
        ) -> Any:
            if cache.replay:
                # Below the last frozen layer nothing needs computing: pass the input through.
                return cache.replayed(hidden_states) if _index == last else hidden_states
            output = _original(hidden_states, *args, **kwargs)
            if _index == last and isinstance(output, torch.Tensor):
                cache.record(output)
            return output

        layer.forward = types.MethodType(forward, layer)  # type: ignore[method-assign]
    return cache
