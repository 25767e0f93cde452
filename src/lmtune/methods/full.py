"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from lmtune.methods.base import Method, MethodContext


class FullMethod(Method, capabilities={"fixed-trainable-set", "mergeable", "multi-task"}):
    name: ClassVar[str] = "full"
    description: ClassVar[str] = "Train every parameter (the strongest baseline, the most memory)."
    default_learning_rate: ClassVar[float] = 5e-5

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
