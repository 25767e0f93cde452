"""The optimizers `train.optimizer` names: the Trainer's `optim` value each maps to, the package
it needs, and what it is for.

The optimizers themselves are transformers' and their packages' (torch, bitsandbytes, galore-torch,
apollo-torch); this table only names them, so the config can refuse a missing package before a
run starts, and GaLore/APOLLO get the target layers and arguments the Trainer asks for. Muon,
which transformers does not build, is built by lmtune (`builder`, called from
`LmtuneTrainer.create_optimizer`): torch's Muon for hidden weight matrices beside the Trainer's AdamW.
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
    # "module:function" that builds it from the model and the Trainer's AdamW (`trainer_name`),
    # for an optimizer transformers does not build; it reads `train.optimizer_args` itself.
    builder: str | None = None
    torch_class: str | None = None  # the torch.optim class it needs (newer torch versions only)
    # It needs every weight matrix whole in each process (not sharded by FSDP or DeepSpeed).
    whole_matrices: bool = False


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
    "muon": Optimizer(
        "adamw_torch_fused",
        "Muon (Jordan et al., 2024; torch.optim.Muon): orthogonalised momentum updates for the hidden "
        "layers' weight matrices (LoRA's A and B included), AdamW for embeddings, heads, biases and norms; "
        "both at the method's usual learning rate (Moonlight's RMS matching).",
        builder="lmtune.training.muon:build",
        torch_class="Muon",
        whole_matrices=True,
    ),
}


def check_available(name: str) -> None:
    """Raise ValueError (a config error) when the optimizer's package or torch class is missing."""
    package = OPTIMIZERS[name].package
    if package is not None and importlib.util.find_spec(package) is None:
        raise ValueError(f"optimizer {name} needs the {package} package, which is not installed: {EXTRA}")
    wanted = OPTIMIZERS[name].torch_class
    if wanted is not None:
        import torch

        if not hasattr(torch.optim, wanted):
            raise ValueError(
                f"optimizer {name} needs torch.optim.{wanted} (torch 2.9 or later); this is torch "
                f"{torch.__version__}: pip install -U torch"
            )


def check_settings(name: str, arguments: dict[str, Any], strategy: str | None) -> None:
    """Raise ValueError (a config error) for optimizer_args lmtune's own builder does not take, or
    a sharding strategy the optimizer cannot run under."""
    chosen = OPTIMIZERS[name]
    if chosen.whole_matrices and strategy in ("fsdp", "deepspeed"):
        raise ValueError(
            f"optimizer {name} orthogonalises whole weight matrices, which distributed.strategy {strategy} "
            "shards across processes; use strategy ddp, or another optimizer"
        )
    if chosen.builder is not None:
        build_settings(name)(arguments)


def build_settings(name: str) -> Any:
    """The `settings(arguments)` function beside the builder of optimizer `name` (its own check)."""
    module, _ = str(OPTIMIZERS[name].builder).split(":")
    return importlib.import_module(module).settings


def builder(name: str) -> Any:
    """lmtune's builder for optimizer `name` (see `Optimizer.builder`), None: the Trainer builds it."""
    path = OPTIMIZERS[name].builder
    if path is None:
        return None
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


def trainer_arguments(
    name: str, target_modules: list[str] | str, arguments: dict[str, Any]
) -> dict[str, Any]:
    """TrainingArguments for optimizer `name`: `optim`, and for GaLore/APOLLO the target layers."""
    chosen = OPTIMIZERS[name]
    out: dict[str, Any] = {"optim": chosen.trainer_name}
    if chosen.low_rank:
        out["optim_target_modules"] = target_modules
    if arguments and chosen.builder is None:  # a builder passes them itself, not to the Trainer's AdamW
        out["optim_args"] = ",".join(f"{key}={value}" for key, value in arguments.items())
    return out
