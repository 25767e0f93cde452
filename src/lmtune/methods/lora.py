"""LoRA (Hu et al., 2021) through peft: low-rank updates on chosen linear layers."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmtune.methods.base import MethodContext
from lmtune.methods.peft_base import PeftMethod, default_target_modules


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=8, ge=1, description="Rank of the update.")
    alpha: float = Field(default=16, gt=0, description="Scaling numerator (update is scaled by alpha/r).")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        default=None, description="Layers to adapt; default: peft's per-architecture choice."
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases also train.")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")


class LoraMethod(PeftMethod, capabilities={"fixed-trainable-set", "mergeable", "peft-adapter", "multi-task"}):
    name: ClassVar[str] = "lora"
    description: ClassVar[str] = "Low-rank adapters on attention layers via peft (small, fast, strong)."
    Options = LoraOptions
    default_learning_rate: ClassVar[float] = 1e-3
    use_dora: ClassVar[bool] = False

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import LoraConfig

        opts: LoraOptions = self.options  # type: ignore[assignment]
        return LoraConfig(
            task_type=ctx.task.peft_task_type,
            r=opts.r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=opts.target_modules or default_target_modules(model),
            bias=opts.bias,
            use_rslora=opts.use_rslora,
            use_dora=self.use_dora,
            modules_to_save=modules_to_save or None,
        )
