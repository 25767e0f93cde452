"""The method interface: what every fine-tuning method implements.

A method takes a freshly built task model and decides what trains: it freezes parameters,
wraps modules (adapters) or hands the model to peft. It also owns how its result is saved
and loaded, because a LoRA adapter and a full model are stored differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from lmtune.capabilities import METHOD_CAPABILITIES, Capable
from lmtune.errors import LmtuneError

# Builds the task model from a directory (None: the base pretrained model).
ModelBuilder = Callable[[str | None], nn.Module]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class MethodContext:
    """What a method may need to know about the run when it is applied."""

    task: Any  # lmtune.tasks.base.Task
    total_steps: int | None = None
    # A saved adapter to go on training (model.from_run: continue); methods that declare
    # "peft-adapter" load it instead of starting a new one.
    init_adapter: str | None = None
    # `count` batches of training rows as the model's forward takes them (collated, no labels), for
    # initialisations computed from data (LoRA's EVA); None where the run has none in memory
    # (data.streaming) or there is no run.
    training_batches: Callable[[int], list[dict[str, Any]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Method(Capable):
    """A fine-tuning method. Declares `capabilities` (see `lmtune.capabilities`) and the hooks
    its consumers call: `apply`, `callbacks`, `optimizer`, `save`, `load` and, where mergeable,
    `merged`."""

    kind: ClassVar[str] = "method"
    vocabulary: ClassVar[dict[str, str]] = METHOD_CAPABILITIES
    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    default_learning_rate: ClassVar[float] = 5e-5

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """Return the model with only the intended parameters trainable."""
        raise NotImplementedError

    def callbacks(self) -> list[Any]:
        """Trainer callbacks the method needs (e.g. to unfreeze layers as epochs pass)."""
        return []

    def optimizer(self, model: nn.Module, optimizer_cls: type, kwargs: dict[str, Any]) -> Any:
        """The method's own optimizer (e.g. LoRA+'s parameter groups), built from the class and
        arguments the run's `train.optimizer` resolves to; None: the Trainer's usual one."""
        return None

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained weights; by default the whole model in transformers' format."""
        model.save_pretrained(directory, safe_serialization=True)

    def load(self, directory: Path, build: ModelBuilder) -> nn.Module:
        """Rebuild the trained model from `directory` (written by `save`)."""
        return build(str(directory))

    @classmethod
    def merged(cls, model: nn.Module) -> nn.Module:
        """A plain transformers model computing what `model` computes (for `mergeable` methods).

        Methods that train the model's own weights (full, freeze, BitFit, ...) return it as it is.
        """
        cls.require("mergeable", "merging into the base model", hint=MERGE_HINT)
        return model


MERGE_HINT = "export with --no-merge --keep-adapter (the run's model/ directory, as it was trained)"


# ---- helpers shared by the methods ---------------------------------------------------------
def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def freeze_all(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def is_head_parameter(name: str, head_names: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(part in head_names for part in parts)


def unfreeze_head(model: nn.Module, head_names: tuple[str, ...]) -> int:
    """Make the task head trainable; returns how many tensors that touched."""
    touched = 0
    for name, param in model.named_parameters():
        if is_head_parameter(name, head_names):
            param.requires_grad_(True)
            touched += 1
    if touched == 0:
        raise LmtuneError(
            f"cannot find the task head ({', '.join(head_names)}) in {model.__class__.__name__}",
            hint="this method needs a model with a standard task head",
        )
    return touched


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The stack of transformer blocks: the longest ModuleList of identical blocks."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(block) for block in module}
            if len(kinds) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise LmtuneError(f"cannot find the transformer layers of {model.__class__.__name__}")
    return best
