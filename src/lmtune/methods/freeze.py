"""Layer freezing: train only the top k transformer layers and the task head."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmtune.methods.base import Method, MethodContext, find_layers, freeze_all, unfreeze_head


class FreezeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_trainable_layers: int = Field(default=2, ge=0, description="Top layers that train (0: head only).")
    train_embeddings: bool = Field(default=False, description="Also train the embeddings.")
    cache_activations: bool = Field(
        default=True,
        description="Compute the frozen bottom once per example and reuse it in later epochs "
        "(frozen layers then run without dropout).",
    )
    cache_max_mb: float = Field(default=4096, gt=0, description="Memory budget of that cache.")


class FreezeMethod(Method, capabilities={"fixed-trainable-set", "mergeable", "multi-task"}):
    name: ClassVar[str] = "freeze"
    description: ClassVar[str] = "Freeze the lower layers; train the top k layers and the head."
    Options = FreezeOptions
    default_learning_rate: ClassVar[float] = 1e-4

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        opts: FreezeOptions = self.options  # type: ignore[assignment]
        freeze_all(model)
        _, layers = find_layers(model)
        k = min(opts.num_trainable_layers, len(layers))
        for block in list(layers)[len(layers) - k :]:
            for param in block.parameters():
                param.requires_grad_(True)
        if opts.train_embeddings:
            embeddings = model.get_input_embeddings()
            for param in embeddings.parameters():
                param.requires_grad_(True)
        unfreeze_head(model, ctx.task.head_names)
        frozen = list(layers)[: len(layers) - k]
        if opts.cache_activations and frozen and not opts.train_embeddings:
            from lmtune.methods.activation_cache import attach

            self.activation_cache = attach(model, frozen, opts.cache_max_mb)
        return model
