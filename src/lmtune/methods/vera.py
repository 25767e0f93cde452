"""VeRA (Kopiczko et al., 2024) through peft: one pair of frozen random low-rank matrices shared
by every adapted layer, and per layer only two trained scaling vectors.

Far fewer trained parameters than LoRA at the same rank (VeRA's rank is typically much higher,
256 here); it needs a higher learning rate. Target modules default to peft's per-architecture
choice (query and value on BERT, q_proj and v_proj on Llama); the shared random matrices are
saved with the adapter, so a run reloads without the seed that drew them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmtune.methods.base import MethodContext
from lmtune.methods.peft_base import PeftMethod, default_target_modules


class VeraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=256, ge=1, description="Rank of the shared random matrices.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    d_initial: float = Field(default=0.1, gt=0, description="Initial value of the trained scaling vector d.")
    target_modules: list[str] | None = Field(
        default=None,
        description="Layers to adapt (all of one shape); default: peft's per-architecture choice.",
    )


class VeraMethod(PeftMethod, capabilities={"fixed-trainable-set", "mergeable", "peft-adapter"}):
    name: ClassVar[str] = "vera"
    description: ClassVar[str] = (
        "VeRA via peft: shared frozen random matrices, two trained vectors per layer."
    )
    Options = VeraOptions
    default_learning_rate: ClassVar[float] = 1e-2

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import VeraConfig

        opts: VeraOptions = self.options  # type: ignore[assignment]
        return VeraConfig(
            task_type=ctx.task.peft_task_type,
            r=opts.r,
            vera_dropout=opts.dropout,
            d_initial=opts.d_initial,
            target_modules=opts.target_modules or default_target_modules(model),
            save_projection=True,
            modules_to_save=modules_to_save or None,
        )
