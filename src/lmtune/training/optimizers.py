"""The optimizers `train.optimizer` names: the Trainer's `optim` value each maps to, the package
it needs, and what it is for.

The optimizers themselves are transformers' and their packages' (torch, bitsandbytes, galore-torch,
apollo-torch); this table only names them, so the config can refuse a missing package before a
run starts, and GaLore/APOLLO get the target layers and arguments the Trainer asks for.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Optimizer:
    trainer_name: str  # TrainingArguments.optim
    description: str
    package: str | None = None  # the module it imports, when not torch itself
    # GaLore and APOLLO keep the states of target linear weights in a low-rank projection.
    low_rank: bool = False


EXTRA = "pip install 'lmtune[optimizers]'"
OPTIMIZERS: dict[str, Optimizer] = {
    "adamw": Optimizer("adamw_torch_fused", "AdamW (torch's fused kernel)."),
    "sgd": Optimizer("sgd", "SGD."),
    "adafactor": Optimizer("adafactor", "Adafactor: factored second moments, less state memory."),
    "adamw_8bit": Optimizer(
        "adamw_bnb_8bit",
        "AdamW with 8-bit states (bitsandbytes): a quarter of the state memory.",
        "bitsandbytes",
    ),
    "lion": Optimizer(
        "lion_32bit",
        "Lion (Chen et al., 2023; bitsandbytes): sign updates, one state; a 3-10x smaller learning rate.",
        "bitsandbytes",
    ),
    "galore_adamw": Optimizer(
        "galore_adamw",
        "GaLore (Zhao et al., 2024): AdamW whose states live in a low-rank projection of each target "
        "layer's gradient; for full fine-tuning in less memory.",
        "galore_torch",
        low_rank=True,
    ),
    "apollo_adamw": Optimizer(
        "apollo_adamw",
        "APOLLO (Zhu et al., 2024): AdamW-like learning rates scaled from a low-rank random projection; "
        "for full fine-tuning in SGD-like memory.",
        "apollo_torch",
        low_rank=True,
    ),
}


def check_available(name: str) -> None:
    """Raise ValueError (a config error) when the optimizer's package is not installed."""
    package = OPTIMIZERS[name].package
    if package is not None and importlib.util.find_spec(package) is None:
        raise ValueError(f"optimizer {name} needs the {package} package, which is not installed: {EXTRA}")


def trainer_arguments(
    name: str, target_modules: list[str] | str, arguments: dict[str, Any]
) -> dict[str, Any]:
    """TrainingArguments for optimizer `name`: `optim`, and for GaLore/APOLLO the target layers."""
    chosen = OPTIMIZERS[name]
    out: dict[str, Any] = {"optim": chosen.trainer_name}
    if chosen.low_rank:
        out["optim_target_modules"] = target_modules
    if arguments:
        out["optim_args"] = ",".join(f"{key}={value}" for key, value in arguments.items())
    return out
