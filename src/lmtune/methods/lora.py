"""LoRA (Hu et al., 2021) through peft: low-rank updates on chosen linear layers.

Options beyond the rank: peft's initialisations (Gaussian; PiSSA and its fast randomised SVD;
OLoRA), rank-stabilised scaling, and LoRA+ (the B matrices learn faster than the A matrices).
PiSSA and OLoRA move the adapter's initial product out of the base weights (the base becomes a
residual). Saved as trained, the adapter would make peft redo that on every load, rewriting the
base that a server shares with other adapters (and `base=none` serves), and a randomised SVD
would not give the same residual twice. So the run saves it as a plain LoRA on the untouched
base (the trained product minus the initial one, rank 2r): it loads, serves, merges and exports
like any LoRA run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from lmtune.methods.base import MethodContext
from lmtune.methods.peft_base import PeftMethod, default_target_modules

# Initialisations that change the base weights (peft subtracts the adapter's start from them).
_RESIDUAL_INITS = re.compile(r"^(pissa(_niter_\d+)?|olora)$")


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=8, ge=1, description="Rank of the update.")
    alpha: float = Field(default=16, gt=0, description="Scaling numerator (update is scaled by alpha/r).")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        default=None, description="Layers to adapt; default: peft's per-architecture choice."
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases also train.")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")
    init: str = Field(
        default="default",
        description="Adapter initialisation: default (A random, B zero), gaussian, pissa (A and B from the "
        "weight's top singular vectors; pissa_niter_N: fast randomised SVD with N iterations), olora "
        "(QR of the weight). pissa and olora start from the same outputs as the base model.",
    )
    loraplus_lr_ratio: float | None = Field(
        default=None,
        ge=1,
        description="LoRA+ (Hayou et al., 2024): the B matrices train at this many times the learning rate "
        "of the A matrices (the paper suggests 16); unset: one learning rate.",
    )

    @field_validator("init")
    @classmethod
    def _known_init(cls, value: str) -> str:
        if value in ("default", "gaussian") or _RESIDUAL_INITS.match(value):
            return value
        raise ValueError(
            f"init {value!r}: expected default, gaussian, pissa, pissa_niter_N (e.g. pissa_niter_4) or olora"
        )


class LoraMethod(PeftMethod, capabilities={"fixed-trainable-set", "mergeable", "peft-adapter", "multi-task"}):
    name: ClassVar[str] = "lora"
    description: ClassVar[str] = "Low-rank adapters on attention layers via peft (small, fast, strong)."
    Options = LoraOptions
    default_learning_rate: ClassVar[float] = 1e-3
    use_dora: ClassVar[bool] = False

    def __init__(self, options: BaseModel) -> None:
        super().__init__(options)
        self._initial_adapter: dict[str, Any] | None = None  # PiSSA/OLoRA: the adapter's start

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import LoraConfig

        opts: LoraOptions = self.options  # type: ignore[assignment]
        return LoraConfig(
            task_type=ctx.task.peft_task_type,
            r=opts.r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=opts.target_modules or default_target_modules(model),
            bias=opts.bias,
            use_rslora=opts.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=True if opts.init == "default" else opts.init,
            modules_to_save=modules_to_save or None,
        )

    @property
    def moves_base_weights(self) -> bool:
        return bool(_RESIDUAL_INITS.match(self.options.init))  # type: ignore[attr-defined]

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        from peft import get_peft_model_state_dict

        adapted = super().apply(model, ctx)
        if self.moves_base_weights and ctx.init_adapter is None:
            state = get_peft_model_state_dict(adapted)
            self._initial_adapter = {k: v.detach().clone() for k, v in state.items() if ".lora_" in k}
        return adapted

    def save(self, model: nn.Module, directory: Path) -> None:
        super().save(model, directory)
        if self._initial_adapter is not None:
            save_on_untouched_base(model, Path(directory), self._initial_adapter)

    def optimizer(self, model: nn.Module, optimizer_cls: type, kwargs: dict[str, Any]) -> Any:
        """LoRA+: peft's optimizer with the B matrices in their own, faster parameter group."""
        ratio = self.options.loraplus_lr_ratio  # type: ignore[attr-defined]
        if ratio is None:
            return None
        from peft.optimizers import create_loraplus_optimizer

        settings = dict(kwargs)
        return create_loraplus_optimizer(
            model, optimizer_cls, lr=settings.pop("lr"), loraplus_lr_ratio=ratio, **settings
        )


def save_on_untouched_base(model: nn.Module, directory: Path, initial: dict[str, Any]) -> None:
    """Rewrite a PiSSA/OLoRA adapter saved in `directory` as a LoRA on the original base.

    The trained model computes W_res + B A, where W_res = W - B0 A0; on the original W that is
    W + (B A - B0 A0) = W + [B | -B0] [A ; A0]: a LoRA of rank 2r at the same scaling. peft's own
    conversion (`path_initial_model_for_weight_conversion`) does this maths but drops the task
    head saved beside the adapter (`modules_to_save`), which lmtune's runs need, so it is done here.
    """
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    for key, value in list(state.items()):
        if ".lora_A." in key:
            state[key] = torch.cat([value, initial[key].cpu()], dim=0).contiguous()
        elif ".lora_B." in key:
            state[key] = torch.cat([value, -initial[key].cpu()], dim=1).contiguous()
    save_file(state, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config_file = directory / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["init_lora_weights"] = True  # loading must not move the base weights again
    scale = 2**0.5 if config.get("use_rslora") else 2  # keeps alpha/r (rsLoRA: alpha/sqrt(r)) as it was
    config["r"] *= 2
    config["lora_alpha"] *= scale
    if config.get("rank_pattern"):
        config["rank_pattern"] = {name: 2 * rank for name, rank in config["rank_pattern"].items()}
    if config.get("alpha_pattern"):
        config["alpha_pattern"] = {name: scale * alpha for name, alpha in config["alpha_pattern"].items()}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
