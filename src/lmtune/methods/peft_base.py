"""Shared plumbing for methods that peft implements (LoRA family, IA3, prompt tuning).

peft owns the maths and the file format; this base class turns our options into a peft
config, keeps the task head trainable and saved (`modules_to_save`), and saves/loads in
peft's own format so a run's adapter loads with plain `PeftModel.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import Method, MethodContext, ModelBuilder


def present_modules(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Which of `names` exist as sub-module names in `model`."""
    found = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [n for n in names if n in found]


def default_target_modules(model: nn.Module, fallback: tuple[str, ...] = ()) -> list[str] | str:
    """peft's per-architecture LoRA targets, or 'all-linear' for architectures it does not know."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if targets:
        return list(targets)
    return list(fallback) if fallback else "all-linear"


class PeftMethod(Method):
    """A method whose adapter is built by peft from `peft_config()`."""

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        raise NotImplementedError

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        from peft import get_peft_model

        modules_to_save = present_modules(model, ctx.task.peft_head_names)
        config = self.peft_config(model, ctx, modules_to_save)
        try:
            return get_peft_model(model, config)
        except (ValueError, TypeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise LmtuneError(
                f"method '{self.name}' cannot be applied to {model.__class__.__name__}: {first[:300]}",
                hint="check the method options (e.g. target_modules) or pick another method",
            ) from None

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)

    def load(self, directory: Path, build: ModelBuilder) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(build(None), str(directory))
