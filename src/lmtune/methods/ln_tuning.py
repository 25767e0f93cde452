"""LN tuning (Zhao et al., 2024) through peft: only the layer norms train (and the task head).

The smallest adapter there is on an encoder (MiniLM: 10k parameters beside the head), and a strong
baseline for it. The norms are found by type, so any architecture works: every LayerNorm or
RMSNorm module below the task head.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import MethodContext, is_head_parameter
from lmtune.methods.peft_base import PeftMethod


class LnTuningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_modules: list[str] | None = Field(
        default=None, description="Norm layers to train (name suffixes); default: every LayerNorm/RMSNorm."
    )


def norm_layer_names(model: nn.Module, head_names: tuple[str, ...]) -> list[str]:
    """The leaf names of the model's normalisation layers outside its head (e.g. LayerNorm, norm)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name
        and not is_head_parameter(name, head_names)
        and (isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm")))
    }
    return sorted(names)


class LnTuningMethod(PeftMethod, capabilities={"fixed-trainable-set", "mergeable", "peft-adapter"}):
    name: ClassVar[str] = "ln-tuning"
    description: ClassVar[str] = "LN tuning via peft: only the layer norms (and the head) train."
    Options = LnTuningOptions
    default_learning_rate: ClassVar[float] = 5e-3

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import LNTuningConfig

        targets = self.options.target_modules or norm_layer_names(model, ctx.task.head_names)  # type: ignore[attr-defined]
        if not targets:
            raise LmtuneError(
                f"ln-tuning found no LayerNorm or RMSNorm layer in {model.__class__.__name__}",
                hint="set method.target_modules to the model's norm layers",
            )
        return LNTuningConfig(
            task_type=ctx.task.peft_task_type, target_modules=targets, modules_to_save=modules_to_save or None
        )
