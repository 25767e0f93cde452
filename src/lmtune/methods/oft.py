"""OFT (Qiu et al., 2023) through peft: each adapted layer's input is rotated by a trained
block-diagonal orthogonal matrix, which keeps the angles between the weight's neurons (their
hyperspherical energy) while the layer adapts.

Each block of `block_size` input features gets its own rotation, built by peft (Cayley-Neumann)
from a skew-symmetric matrix: a block of b features trains b(b-1)/2 numbers. `r` names the number
of blocks per layer instead; peft takes one of the two, since r x block_size is the layer's input
width. The rotation starts as the identity (the run starts from the base model's outputs) and
folds into the base weight, so a run merges. Target modules default to peft's per-architecture
choice (query and value on BERT, q_proj and v_proj on Llama).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from lmtune.methods.base import MethodContext
from lmtune.methods.peft_base import PeftMethod, default_target_modules

DEFAULT_BLOCK_SIZE = 32  # peft's default


class OftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    block_size: int | None = Field(
        default=None,
        ge=2,
        description=f"Input features per orthogonal block (default {DEFAULT_BLOCK_SIZE}; instead of r); it "
        "should divide every adapted layer's input width (peft otherwise takes the nearest divisor).",
    )
    r: int | None = Field(
        default=None, ge=1, description="Number of orthogonal blocks per layer (instead of block_size)."
    )
    module_dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Multiplicative dropout: share of blocks set to identity."
    )
    target_modules: list[str] | None = Field(
        default=None, description="Layers to adapt; default: peft's per-architecture choice."
    )

    @model_validator(mode="after")
    def _size_or_number(self) -> OftOptions:
        if self.r is not None and self.block_size is not None:
            raise ValueError(
                "set r (blocks per layer) or block_size, not both: r x block_size is the layer's input width"
            )
        return self


class OftMethod(PeftMethod, capabilities={"fixed-trainable-set", "mergeable", "peft-adapter", "multi-task"}):
    name: ClassVar[str] = "oft"
    description: ClassVar[str] = (
        "OFT via peft: a trained block-diagonal rotation of each adapted layer's input."
    )
    Options = OftOptions
    default_learning_rate: ClassVar[float] = 3e-3

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import OFTConfig

        opts: OftOptions = self.options  # type: ignore[assignment]
        # peft reads 0 as "not set" and wants exactly one of the two non-zero.
        block_size = 0 if opts.r is not None else (opts.block_size or DEFAULT_BLOCK_SIZE)
        return OFTConfig(
            task_type=ctx.task.peft_task_type,
            r=opts.r or 0,
            oft_block_size=block_size,
            module_dropout=opts.module_dropout,
            target_modules=opts.target_modules or default_target_modules(model),
            modules_to_save=modules_to_save or None,
        )
