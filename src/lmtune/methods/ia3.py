"""IA3 (Liu et al., 2022) through peft: learned vectors that rescale activations.

IA3 multiplies the keys, values and the feed-forward input by trained vectors (one value
per feature), so it trains even fewer parameters than LoRA. Target and feed-forward modules
default to peft's per-architecture choice; the task head trains and is saved with the
adapter (`modules_to_save`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import MethodContext
from lmtune.methods.peft_base import PeftMethod


class Ia3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_modules: list[str] | None = Field(
        default=None,
        description="Layers whose activations are rescaled; default: peft's choice per architecture.",
    )
    feedforward_modules: list[str] | None = Field(
        default=None,
        description="Which target modules are feed-forward (their input is rescaled, not their output); "
        "must be a subset of target_modules; default: peft's per-architecture choice.",
    )


def ia3_modules(model: nn.Module, opts: Ia3Options) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) from the options or peft's defaults."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    )

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = opts.target_modules or TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise LmtuneError(
            f"ia3 has no default target modules for model type '{model_type}'",
            hint="set method.target_modules and method.feedforward_modules",
        )
    if opts.feedforward_modules is not None:
        feedforward = opts.feedforward_modules
    elif opts.target_modules is None:
        feedforward = list(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, []))
    else:
        feedforward = []
    missing = [m for m in feedforward if m not in targets]
    if missing:
        raise LmtuneError(
            f"ia3 feedforward_modules {missing} are not in target_modules {list(targets)}",
            hint="feedforward_modules must be a subset of target_modules",
        )
    return list(targets), list(feedforward)


class Ia3Method(PeftMethod, capabilities={"fixed-trainable-set", "mergeable", "peft-adapter", "multi-task"}):
    name: ClassVar[str] = "ia3"
    description: ClassVar[str] = "IA3 via peft: trained vectors rescale keys, values and FFN inputs (tiny)."
    Options = Ia3Options
    default_learning_rate: ClassVar[float] = 3e-3

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import IA3Config

        targets, feedforward = ia3_modules(model, self.options)  # type: ignore[arg-type]
        return IA3Config(
            task_type=ctx.task.peft_task_type,
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=modules_to_save or None,
        )
