"""A fresh task head scaled to the features it reads, so that training starts from soft predictions.

transformers initialises a new head (`score`, `classifier`, `qa_outputs`) with weights drawn at
`initializer_range` (0.02), which assumes features of about unit scale, as an encoder's final
LayerNorm gives. Decoders do not: Gemma 3 270M's last hidden states have an RMS of about 9.5
(norms around 240), so its fresh token-classification head started with logits of standard
deviation near 5, a loss of 7.9 over CLUENER's 21 tags (uniform: 3.0) and gradient norms of 120,
clipped, in a run of 38 steps that ended predicting almost only "O" (entity F1 0.003).

Here the head's weights are divided by the RMS of its inputs over a few training batches, when
that RMS exceeds 1: the head then starts as it would on unit-scale features. A head is never
scaled up, so encoders' heads (inputs of RMS below 1) are left exactly as transformers made them.
No library does this (transformers, peft and TRL all keep the fixed-range init), so it is here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

# Batches of training rows the input scale is measured on: enough for a stable RMS, cheap to run.
MEASURE_BATCHES = 2


def checkpoint_keys(path: str) -> set[str] | None:
    """The tensor names in a model directory's safetensors files (None: not such a directory)."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if not files:
        return None
    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            keys.update(handle.keys())
    return keys


def fresh_heads(
    model: torch.nn.Module, head_names: Iterable[str], checkpoint: str
) -> dict[str, torch.nn.Linear]:
    """The model's head projections (Linear modules whose own name is one of `head_names`) that
    `checkpoint` did not hold, i.e. that transformers initialised just now. A merged run's trained
    head is in its checkpoint and is never touched."""
    names = set(head_names)
    keys = checkpoint_keys(checkpoint)
    if keys is None:
        return {}
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in names
        and f"{name}.weight" not in keys
    }


def scale_fresh_heads(
    model: torch.nn.Module,
    head_names: Iterable[str],
    checkpoint: str,
    batches: Callable[[int], list[dict[str, Any]]] | None,
) -> dict[str, float]:
    """Divide each fresh head's weight by the RMS of its inputs where that RMS is above 1.

    `checkpoint` is the directory the model was loaded from; `batches(count)` gives collated
    training batches (None: nothing to measure on, heads kept). Returns {head name: the RMS it
    was scaled by}.
    """
    heads = fresh_heads(model, head_names, checkpoint)
    if not heads or batches is None:
        return {}
    squares = {name: [0.0, 0] for name in heads}

    def recorder(name: str) -> Callable[..., None]:
        def record(_module: Any, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
            features = inputs[0].detach().float()
            squares[name][0] += float(features.pow(2).sum())
            squares[name][1] += features.numel()

        return record

    hooks = [module.register_forward_hook(recorder(name)) for name, module in heads.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches(MEASURE_BATCHES):
                features = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                model(**features)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    scaled = {}
    for name, (total, count) in squares.items():
        rms = (total / count) ** 0.5 if count else 0.0
        if rms > 1.0:
            with torch.no_grad():
                heads[name].weight.div_(rms)
            scaled[name] = round(rms, 3)
    return scaled
