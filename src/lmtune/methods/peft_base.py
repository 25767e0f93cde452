"""Shared plumbing for methods that peft implements (LoRA family, IA3, prompt tuning).

peft owns the maths and the file format; this base class turns our options into a peft
config, keeps the task head trainable and saved (`modules_to_save`), and saves/loads in
peft's own format so a run's adapter loads with plain `PeftModel.from_pretrained`. A packaged
base is named by its hub id in what peft saves, and the transformers config of the base with
lmtune's head (label names, num_labels) is saved beside the adapter as `head_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from lmtune.deferred_bitsandbytes import defer_bitsandbytes
from lmtune.errors import LmtuneError
from lmtune.io import write_json, write_text
from lmtune.methods.base import MERGE_HINT, Method, MethodContext, ModelBuilder
from lmtune.models import packaged_hub_id

# Not `config.json`: beside `adapter_config.json` that would make transformers take the adapter
# folder for a complete model and look there for the base weights.
HEAD_CONFIG_NAME = "head_config.json"


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

        if ctx.init_adapter is not None:
            return self._continued(model, ctx.init_adapter)
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

    def _continued(self, model: nn.Module, adapter_dir: str) -> nn.Module:
        """The saved adapter (and head) loaded trainable onto `model`, to train on from there."""
        from peft import PeftModel

        try:
            return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
        except (ValueError, RuntimeError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise LmtuneError(
                f"the adapter in {adapter_dir} does not fit this run's model: {first[:300]}",
                hint="continue a run of the same task and labels, or set model.from_run to merge",
            ) from None

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)
        name_base_by_hub_id(Path(directory))
        write_head_config(model, Path(directory))

    def load(self, directory: Path, build: ModelBuilder) -> nn.Module:
        defer_bitsandbytes()  # before peft's first import; a plain adapter needs no 4-bit backend
        from peft import PeftModel

        return PeftModel.from_pretrained(build(None), str(directory))

    @classmethod
    def merged(cls, model: nn.Module) -> nn.Module:
        """peft folds the adapter's deltas into the base weights (`merge_and_unload`)."""
        cls.require("mergeable", "merging into the base model", hint=MERGE_HINT)
        try:
            merged = model.merge_and_unload()
        except (ValueError, TypeError, NotImplementedError, AttributeError) as exc:
            raise LmtuneError(
                f"peft cannot merge method '{cls.name}': {str(exc).splitlines()[0][:200]}",
                hint=MERGE_HINT,
            ) from None
        merged.eval()
        return merged


def name_base_by_hub_id(directory: Path) -> None:
    """Name a packaged base by its hub id in what peft saved (adapter configs, model card).

    peft records the path the base was loaded from, which for a packaged model lies in this
    machine's venv; the hub id names the same model anywhere. Rewritten after saving, so that
    peft's own checks while saving (was the vocabulary resized?) still read the local copy.
    """
    renamed: dict[str, str] = {}
    for config_file in [directory / "adapter_config.json", *directory.glob("*/adapter_config.json")]:
        if not config_file.is_file():
            continue
        config = json.loads(config_file.read_text(encoding="utf-8"))
        local = config.get("base_model_name_or_path")
        hub_id = packaged_hub_id(local)
        if hub_id is not None:
            write_json(config_file, {**config, "base_model_name_or_path": hub_id})
            renamed[local] = hub_id
    card = directory / "README.md"
    if renamed and card.is_file():
        text = card.read_text(encoding="utf-8")
        for local, hub_id in renamed.items():
            text = text.replace(local, hub_id)
        write_text(card, text)


def write_head_config(model: nn.Module, directory: Path) -> None:
    """Save the base's transformers config with lmtune's head: labels, num_labels, problem type.

    peft rebuilds the base from its hub config, which knows no labels; a client passes them on:
    `AutoPeftModelForSequenceClassification.from_pretrained(dir, id2label=head.id2label,
    label2id=head.label2id)` with `head = AutoConfig.from_pretrained(dir / "head_config.json")`.
    """
    base = model.get_base_model()
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "to_diff_dict"):
        return
    data = config.to_diff_dict()
    data["architectures"] = [base.__class__.__name__]
    write_json(directory / HEAD_CONFIG_NAME, data)
