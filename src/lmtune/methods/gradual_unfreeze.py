"""Gradual unfreezing (Howard & Ruder, 2018, ULMFiT): the head first, then layers top-down.

Epoch 0 trains only the task head; every following epoch unfreezes `layers_per_epoch`
more transformer layers, from the top of the stack down.

Design (optimizer). Trainer builds its optimizer from the parameters that have
`requires_grad=True` when training starts, so a layer frozen at that moment would never
be updated after being unfrozen. Therefore `apply()` marks trainable everything the
schedule will ever train (head + the layers reached by the last epoch), Trainer puts all
of it in the optimizer, and the callback then switches `requires_grad` off for the layers
not yet due at the start of every epoch. A frozen parameter gets no gradient (Trainer's
`zero_grad` sets grads to None), and torch's AdamW/SGD skip a parameter whose `.grad` is
None entirely (no moment update, no weight decay), so it stays bit-identical until its
epoch comes; from then on it trains with the same optimizer and learning-rate schedule.

`trainable_params` in metrics.json (counted after `apply()`) is therefore the number of
parameters trained at some point of the run: head + every layer the schedule reaches
within `train.epochs` (all layers when `train.max_steps` decides the length), not the
number trained in the first epoch.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import TrainerCallback

from lmtune.methods.base import Method, MethodContext, find_layers, freeze_all, unfreeze_head


class GradualUnfreezeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers_per_epoch: int = Field(
        default=1, ge=1, description="Transformer layers unfrozen at the start of each epoch after the first."
    )


def layers_due(epoch: int, layers_per_epoch: int, num_layers: int) -> int:
    """How many top layers train in `epoch` (0-based): none in epoch 0."""
    return min(num_layers, max(0, epoch) * layers_per_epoch)


class GradualUnfreezeCallback(TrainerCallback):
    def __init__(self, layers: nn.ModuleList, layers_per_epoch: int, scheduled: int) -> None:
        self.layers = layers
        self.layers_per_epoch = layers_per_epoch
        self.scheduled = scheduled  # layers that apply() made trainable (top ones)

    def set_epoch(self, epoch: int) -> int:
        n = len(self.layers)
        due = min(self.scheduled, layers_due(epoch, self.layers_per_epoch, n))
        for index, block in enumerate(self.layers):
            if index < n - self.scheduled:
                continue  # never trained in this run: frozen since apply()
            trainable = index >= n - due
            for param in block.parameters():
                param.requires_grad_(trainable)
        return due

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # state.epoch is the number of epochs done (fractional when resuming mid-epoch).
        self.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class GradualUnfreezeMethod(Method, capabilities={"mergeable", "multi-task"}):
    refusals: ClassVar[dict[str, str]] = {
        "fixed-trainable-set": "it unfreezes layers while training, and DDP/FSDP only synchronise "
        "the parameters that are trainable when training starts",
    }
    name: ClassVar[str] = "gradual-unfreeze"
    description: ClassVar[str] = "ULMFiT: train the head first, then unfreeze one more layer per epoch."
    Options = GradualUnfreezeOptions
    default_learning_rate: ClassVar[float] = 1e-4

    def __init__(self, options: BaseModel) -> None:
        super().__init__(options)
        self._callback: GradualUnfreezeCallback | None = None

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        opts: GradualUnfreezeOptions = self.options  # type: ignore[assignment]
        freeze_all(model)
        _, layers = find_layers(model)
        train_cfg = getattr(getattr(ctx.task, "cfg", None), "train", None)
        if train_cfg is not None and not train_cfg.max_steps:
            last_epoch = math.ceil(train_cfg.epochs) - 1
            scheduled = layers_due(last_epoch, opts.layers_per_epoch, len(layers))
        else:
            scheduled = len(layers)
        for block in list(layers)[len(layers) - scheduled :]:
            for param in block.parameters():
                param.requires_grad_(True)
        unfreeze_head(model, ctx.task.head_names)
        self._callback = GradualUnfreezeCallback(layers, opts.layers_per_epoch, scheduled)
        return model

    def callbacks(self) -> list[Any]:
        if self._callback is None:
            raise RuntimeError("gradual-unfreeze: apply() must run before callbacks()")
        return [self._callback]
