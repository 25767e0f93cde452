"""BOFT (Liu et al., 2024) through peft: OFT whose orthogonal matrix is a product of sparse
butterfly factors, each block-diagonal after a fixed permutation, so few parameters still mix
every input feature; plus a trained scale per output feature.

Blocks are set by their size or by their number per layer (peft refuses both at once: their
product is the layer's input width). More than one butterfly factor needs peft's CUDA extension
(`fbd_cuda`, built on first use with ninja and nvcc): without it peft quietly trains one factor
and saves a config naming more (a CUDA machine then builds factors that were never trained), so
lmtune refuses that up front, and refuses to load such an adapter where the extension is missing.
Target modules default to peft's per-architecture choice; the rotation folds into the base
weight, so a run merges.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import MethodContext, ModelBuilder
from lmtune.methods.peft_base import PeftMethod, default_target_modules

DEFAULT_BLOCK_SIZE = 4


class BoftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    block_size: int | None = Field(
        default=None,
        ge=2,
        description=f"Size of each orthogonal block (default {DEFAULT_BLOCK_SIZE}; instead of block_num); "
        "must divide every adapted layer's input width.",
    )
    block_num: int | None = Field(
        default=None, ge=1, description="Number of blocks per layer (instead of block_size)."
    )
    n_butterfly_factor: int = Field(
        default=1,
        ge=1,
        description="Butterfly factors in the product (1: one block-diagonal matrix, as OFT); more than 1 "
        "needs peft's CUDA extension.",
    )
    dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Multiplicative dropout: share of blocks set to identity."
    )
    target_modules: list[str] | None = Field(
        default=None, description="Layers to adapt; default: peft's per-architecture choice."
    )

    @model_validator(mode="after")
    def _size_or_number(self) -> BoftOptions:
        if self.block_size is not None and self.block_num is not None:
            raise ValueError(
                "set block_size or block_num, not both: block_size x block_num is the layer's input width"
            )
        return self


def require_butterfly_kernel(factors: int) -> None:
    """Refuse more than one butterfly factor where peft would silently train one instead."""
    if factors <= 1:
        return
    from peft.tuners.boft.layer import get_fbd_cuda

    if get_fbd_cuda() is None:
        raise LmtuneError(
            f"boft with n_butterfly_factor {factors} needs peft's CUDA extension fbd_cuda, which cannot "
            "be built or loaded here (peft would train 1 factor instead)",
            hint="set method.n_butterfly_factor to 1, or run on a CUDA machine with ninja and nvcc",
        )


class BoftMethod(PeftMethod, capabilities={"fixed-trainable-set", "mergeable", "peft-adapter", "multi-task"}):
    name: ClassVar[str] = "boft"
    description: ClassVar[str] = "BOFT via peft: butterfly-factored orthogonal rotations of layer inputs."
    Options = BoftOptions
    default_learning_rate: ClassVar[float] = 3e-3

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        with quiet_kernel_warnings(self.options.n_butterfly_factor):  # type: ignore[attr-defined]
            return super().apply(model, ctx)

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import BOFTConfig

        opts: BoftOptions = self.options  # type: ignore[assignment]
        require_butterfly_kernel(opts.n_butterfly_factor)
        # peft reads 0 as "not set" and wants exactly one of the two non-zero.
        block_size = opts.block_size or (0 if opts.block_num else DEFAULT_BLOCK_SIZE)
        return BOFTConfig(
            task_type=ctx.task.peft_task_type,
            boft_block_size=block_size,
            boft_block_num=opts.block_num or 0,
            boft_n_butterfly_factor=opts.n_butterfly_factor,
            boft_dropout=opts.dropout,
            target_modules=opts.target_modules or default_target_modules(model),
            modules_to_save=modules_to_save or None,
        )

    def load(self, directory: Path, build: ModelBuilder) -> nn.Module:
        config = json.loads((Path(directory) / "adapter_config.json").read_text(encoding="utf-8"))
        factors = int(config.get("boft_n_butterfly_factor", 1))
        require_butterfly_kernel(factors)
        with quiet_kernel_warnings(factors):
            return super().load(directory, build)


@contextmanager
def quiet_kernel_warnings(factors: int) -> Iterator[None]:
    """Silence peft's "failed to load the CUDA extension, setting boft_n_butterfly_factor to 1"
    where the run asks for 1 factor: the extension only speeds that up, and nothing changes."""
    with warnings.catch_warnings():
        if factors <= 1:
            warnings.filterwarnings("ignore", message="Failed to load the CUDA extension")
            warnings.filterwarnings("ignore", message="Setting boft_n_butterfly_factor to 1")
        yield
