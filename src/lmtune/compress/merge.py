"""Turn a run's model into one standalone transformers model (LoRA-family adapters merged in).

peft does the maths (`merge_and_unload` folds LoRA/DoRA/IA3/AdaLoRA deltas into the base
weights); each method says whether it can be merged (its `mergeable` capability, with its own
reason where not) and merges in `Method.merged`; this file saves the result with plain
`save_pretrained`, so `AutoModelFor...from_pretrained(dir)` loads it without lmtune or peft.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn


def method_class(method: str) -> Any:
    from lmtune.methods import get_method_class

    return get_method_class(method)


def check_mergeable(method: str) -> None:
    """Raise `LmtuneError` unless the run's method declares that it can be merged."""
    from lmtune.methods.base import MERGE_HINT

    method_class(method).require("mergeable", "merging into the base model", hint=MERGE_HINT)


def merge(model: nn.Module, method: str) -> nn.Module:
    """A plain transformers model computing what `model` computes (adapters merged in).

    The method does the merging (`Method.merged`): peft methods fold their deltas in; methods
    that train the model's own weights (full, freeze, bitfit, gradual-unfreeze) return it as it is.
    """
    return method_class(method).merged(model)


def save_model(model: nn.Module, tokenizer: Any, directory: Path) -> None:
    """`save_pretrained` (safetensors) + tokenizer: loadable with plain transformers."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def copy_adapter(run_model_dir: Path, directory: Path) -> None:
    """The run's adapter (+ head, lmtune.json, tokenizer) as it was trained, for peft users."""
    shutil.copytree(run_model_dir, directory, dirs_exist_ok=True)
