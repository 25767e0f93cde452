"""BitFit (Ben Zaken et al., 2022): train only the bias terms and the task head.

Written here because peft has no BitFit; it is a requires_grad mask, nothing more.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import Method, MethodContext, freeze_all, unfreeze_head


class BitFitMethod(Method, capabilities={"fixed-trainable-set", "mergeable", "multi-task"}):
    name: ClassVar[str] = "bitfit"
    description: ClassVar[str] = "Train only bias terms and the task head (about 0.1% of parameters)."
    default_learning_rate: ClassVar[float] = 1e-3

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        freeze_all(model)
        biases = 0
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.requires_grad_(True)
                biases += 1
        if biases == 0:
            raise LmtuneError(
                f"{model.__class__.__name__} has no bias terms, so BitFit would train only the head",
                hint="choose lora or freeze for this model",
            )
        unfreeze_head(model, ctx.task.head_names)
        return model
