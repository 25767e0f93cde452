"""Turn a run's model into one standalone transformers model (LoRA-family adapters merged in).

peft does the maths (`merge_and_unload` folds LoRA/DoRA/IA3/AdaLoRA deltas into the base
weights); this file decides which runs can be merged, says clearly which cannot, and saves
the result with plain `save_pretrained` so `AutoModelFor...from_pretrained(dir)` loads it
without lmtune or peft.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from lmtune.errors import LmtuneError

# peft's prompt-learning methods prepend virtual tokens at run time: there is no weight to merge.
_PROMPT_LEARNING = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING")


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _has_bottleneck_adapters(model: nn.Module) -> bool:
    from lmtune.methods.adapters import BottleneckAdapter

    return any(isinstance(m, BottleneckAdapter) for m in model.modules())


def check_mergeable(model: nn.Module, method: str) -> None:
    """Raise `LmtuneError` for a model whose trained part cannot be folded into plain weights."""
    if _has_bottleneck_adapters(model):
        raise LmtuneError(
            f"method '{method}' adds bottleneck adapter modules: they cannot be merged into base weights",
            hint="export with --no-merge --keep-adapter (the run's model/ loads with `lmtune` only)",
        )
    if any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules()):
        raise LmtuneError(
            f"method '{method}' trained its adapter on a quantized base: merging into it would give "
            "a quantized model, and merging into the full-precision base is not built yet",
            hint="export with --no-merge --keep-adapter (peft loads the adapter onto the base: "
            "PeftModel.from_pretrained(base, dir).merge_and_unload())",
        )
    if is_peft(model):
        config = model.peft_config[model.active_adapter]
        peft_type = str(getattr(config.peft_type, "value", config.peft_type))
        if peft_type in _PROMPT_LEARNING or not hasattr(model, "merge_and_unload"):
            raise LmtuneError(
                f"method '{method}' ({peft_type.lower()}) learns virtual tokens, not weight deltas: "
                "nothing to merge",
                hint="export with --no-merge --keep-adapter, or train with lora/dora/ia3 to get a "
                "standalone model",
            )


def merge(model: nn.Module, method: str) -> nn.Module:
    """A plain transformers model computing what `model` computes (adapters merged in).

    Models that are already plain (full, freeze, bitfit, gradual-unfreeze) come back as they are.
    """
    check_mergeable(model, method)
    if not is_peft(model):
        return model
    try:
        merged = model.merge_and_unload()
    except (ValueError, TypeError, NotImplementedError, AttributeError) as exc:
        raise LmtuneError(
            f"peft cannot merge method '{method}': {str(exc).splitlines()[0][:200]}",
            hint="export with --no-merge --keep-adapter",
        ) from None
    merged.eval()
    return merged


def save_model(model: nn.Module, tokenizer: Any, directory: Path) -> None:
    """`save_pretrained` (safetensors) + tokenizer: loadable with plain transformers."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def copy_adapter(run_model_dir: Path, directory: Path) -> None:
    """The run's adapter (+ head, lmtune.json, tokenizer) as it was trained, for peft users."""
    shutil.copytree(run_model_dir, directory, dirs_exist_ok=True)
