"""AdaLoRA (Zhang et al., 2023) through peft: LoRA whose rank budget is reallocated in training.

Every adapted layer starts at rank `init_r` in SVD form (P diag(E) Q); after `tinit`
warm-up steps the least important singular values are pruned step by step until the
average rank is `target_r` at `total_step - tfinal`, then the ranks stay fixed for the
last `tfinal` steps. peft needs the total number of optimizer steps up front (lmtune
computes it from the data and the config) and `update_and_allocate(step)` after every
optimizer step, before the gradients are cleared: `callbacks()` provides that hook.
The orthogonality penalty (`orth_reg_weight`) is added to the loss by peft's forward,
which Trainer uses as is.

Limitation: resuming from a checkpoint restarts the importance estimates (peft does not
save them); the rank pattern in the saved adapter is what the final model uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import TrainerCallback

from lmtune.errors import LmtuneError
from lmtune.methods.base import MethodContext
from lmtune.methods.peft_base import PeftMethod


class AdaLoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    init_r: int = Field(default=12, ge=1, description="Initial rank of every adapted layer.")
    target_r: int = Field(default=8, ge=1, description="Average rank after the budget is reallocated.")
    alpha: float = Field(default=32, gt=0, description="Scaling of the update (peft's lora_alpha).")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on the adapter input.")
    tinit: float = Field(
        default=0.1,
        ge=0,
        description="Warm-up before ranks are pruned: a fraction of the total steps if below 1, else steps.",
    )
    tfinal: float = Field(
        default=0.2,
        ge=0,
        description="Final steps with fixed ranks: a fraction of the total steps if below 1, else steps.",
    )
    delta_t: int = Field(default=1, ge=1, description="Steps between two budget reallocations.")
    beta1: float = Field(default=0.85, gt=0, lt=1, description="EMA factor of the importance (sensitivity).")
    beta2: float = Field(default=0.85, gt=0, lt=1, description="EMA factor of the importance uncertainty.")
    orth_reg_weight: float = Field(default=0.5, ge=0, description="Weight of the orthogonality penalty.")
    target_modules: list[str] | None = Field(
        default=None, description="Layers to adapt; default: peft's per-architecture choice."
    )


def _steps(value: float, total: int) -> int:
    return round(value * total) if value < 1 else int(value)


def schedule(opts: AdaLoraOptions, total_steps: int | None) -> tuple[int, int]:
    """(tinit, tfinal) in steps; raises unless a budgeting phase of at least one step is left."""
    if not total_steps or total_steps <= 0:
        raise LmtuneError(
            "adalora needs the number of training steps, which is unknown here",
            hint="set train.epochs or train.max_steps",
        )
    if opts.target_r > opts.init_r:
        raise LmtuneError(
            f"adalora target_r ({opts.target_r}) is larger than init_r ({opts.init_r})",
            hint="ranks can only be pruned: set target_r <= init_r",
        )
    tinit, tfinal = _steps(opts.tinit, total_steps), _steps(opts.tfinal, total_steps)
    if tinit + tfinal >= total_steps:
        raise LmtuneError(
            f"adalora needs more training steps: {total_steps} steps leave no budgeting phase "
            f"after tinit={tinit} and tfinal={tfinal}",
            hint="lower method.tinit/method.tfinal (fractions below 1 scale with the run) or train longer",
        )
    return tinit, tfinal


def default_adalora_targets(model: nn.Module) -> list[str] | str:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING.get(model_type)
    return list(targets) if targets else "all-linear"


class AdaLoraCallback(TrainerCallback):
    """Calls peft's `update_and_allocate` after each optimizer step, while gradients exist."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model

    # Trainer runs on_optimizer_step after optimizer.step() and before model.zero_grad(), and
    # state.global_step still counts the steps before this one (0-based), as peft expects.
    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.peft_model.base_model.update_and_allocate(state.global_step)


def _load_with_saved_rank_pattern(peft_model: Any) -> None:
    """Make `load_adapter` use the rank pattern stored with the checkpoint being loaded.

    peft saves an AdaLoRA checkpoint truncated to the rank pattern of that moment, but
    `load_adapter` resizes the live modules by the *current* pattern. When Trainer reloads
    the best checkpoint at the end (load_best_model_at_end) the current pattern is the final
    one, which differs from the best checkpoint's: the shapes clash. Setting the pattern
    from the checkpoint's adapter_config.json first makes the resize match the tensors (the
    live modules are still at init_r, which every pattern indexes).
    """
    original = peft_model.load_adapter

    def load_adapter(model_id: Any, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        config_file = Path(str(model_id)) / "adapter_config.json"
        if adapter_name in peft_model.peft_config and config_file.is_file():
            saved = json.loads(config_file.read_text(encoding="utf-8"))
            peft_model.peft_config[adapter_name].rank_pattern = saved.get("rank_pattern")
        return original(model_id, adapter_name, *args, **kwargs)

    peft_model.load_adapter = load_adapter


class AdaLoraMethod(PeftMethod, capabilities={"fixed-trainable-set", "mergeable", "peft-adapter"}):
    name: ClassVar[str] = "adalora"
    description: ClassVar[str] = "Adaptive-rank LoRA via peft: prunes the rank budget while training."
    Options = AdaLoraOptions
    # Higher than LoRA's: the singular values E start at zero and the orthogonality penalty
    # dominates the early loss, so at 1e-3 a short run barely moves the update (measured on
    # MiniLM, 24 steps: test accuracy 0.56 at 1e-3, 0.81 at 5e-3, 0.94 at 1e-2).
    default_learning_rate: ClassVar[float] = 5e-3

    def __init__(self, options: BaseModel) -> None:
        super().__init__(options)
        self._model: nn.Module | None = None

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import AdaLoraConfig

        opts: AdaLoraOptions = self.options  # type: ignore[assignment]
        tinit, tfinal = schedule(opts, ctx.total_steps)
        return AdaLoraConfig(
            task_type=ctx.task.peft_task_type,
            init_r=opts.init_r,
            target_r=opts.target_r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=opts.delta_t,
            beta1=opts.beta1,
            beta2=opts.beta2,
            orth_reg_weight=opts.orth_reg_weight,
            total_step=ctx.total_steps,
            target_modules=opts.target_modules or default_adalora_targets(model),
            modules_to_save=modules_to_save or None,
        )

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        self._model = super().apply(model, ctx)
        _load_with_saved_rank_pattern(self._model)
        return self._model

    def callbacks(self) -> list[Any]:
        if self._model is None:
            raise RuntimeError("adalora: apply() must run before callbacks()")
        return [AdaLoraCallback(self._model)]
