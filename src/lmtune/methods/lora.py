"""LoRA (Hu et al., 2021) through peft: low-rank updates on chosen linear layers.

Options beyond the rank: peft's initialisations (Gaussian; PiSSA and its fast randomised SVD;
OLoRA; EVA), rank-stabilised scaling, and LoRA+ (the B matrices learn faster than the A matrices).
EVA (Paischer et al., 2024) sets each A from the top right-singular vectors of the layer's inputs
on a few training batches (`MethodContext.training_batches`) and moves rank to the layers whose
inputs those vectors explain best; B starts at zero, so the run starts from the base model's
outputs, and it saves as the plain LoRA it then is (with the ranks EVA chose).
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
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import MethodContext
from lmtune.methods.peft_base import PeftMethod, default_target_modules

# Every linear layer but the output head. peft's per-architecture default (query/value only) left
# NER at entity F1 0.645 where all-linear reached 0.837 at the same steps (benchmarks/ner_defaults.py).
DEFAULT_TARGETS = "all-linear"
# EVA and CorDA take statistics of each adapted layer's inputs over (batch, sequence) features;
# all-linear would include layers that see one vector per sequence (BERT's pooler), which peft's
# EVA and CorDA cannot take, so these inits keep peft's per-architecture layers by default.
_PER_TOKEN_STATISTICS_INITS = re.compile(r"^(eva|corda(_kpm)?)$")
# Initialisations that change the base weights (peft subtracts the adapter's start from them).
_RESIDUAL_INITS = re.compile(r"^(pissa(_niter_\d+)?|olora|corda(_kpm)?)$")
# EVA's SVD runs over this many training batches, cycled until its components converge; changing
# it would change what a run with init eva computes, so it is not an option (nor is peft's rho).
EVA_BATCHES = 16
# CorDA's covariance of each layer's inputs is gathered over this many training batches (fixed for
# the same reason).
CORDA_BATCHES = 16


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=8, ge=1, description="Rank of the update.")
    alpha: float = Field(default=16, gt=0, description="Scaling numerator (update is scaled by alpha/r).")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        default=None,
        description="Layers to adapt; default: all-linear, every linear layer but the output head (as "
        "QLoRA, LLaMA-Factory and unsloth do): on CoNLL-2003 NER with MiniLM it scored entity F1 0.837 "
        "where peft's per-architecture query/value choice scored 0.645 (benchmarks/ner_defaults.py); "
        "init eva and corda keep peft's per-architecture choice.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases also train.")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")
    init: str = Field(
        default="default",
        description="Adapter initialisation: default (A random, B zero), gaussian, pissa (A and B from the "
        "weight's top singular vectors; pissa_niter_N: fast randomised SVD with N iterations), olora "
        "(QR of the weight), eva (A from the top singular vectors of each layer's inputs on training "
        "batches, ranks redistributed), corda (CorDA's instruction-previewed mode: A and B from the SVD "
        "of the weight times the covariance of its inputs on training batches; corda_kpm: the "
        "knowledge-preserving mode, the least-used directions). pissa, olora, eva and corda start "
        "from the same outputs as the base model.",
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
        if value in ("default", "gaussian", "eva") or _RESIDUAL_INITS.match(value):
            return value
        if value == "loftq":
            raise ValueError("init 'loftq' offsets a 4-bit base's quantization error: use method qlora")
        raise ValueError(
            f"init {value!r}: expected default, gaussian, pissa, pissa_niter_N (e.g. pissa_niter_4), "
            "olora, eva, corda or corda_kpm"
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

    def default_targets(self, model: nn.Module) -> list[str] | str:
        """The layers adapted where `target_modules` is not given."""
        init: str = self.options.init  # type: ignore[attr-defined]
        return default_target_modules(model) if _PER_TOKEN_STATISTICS_INITS.match(init) else DEFAULT_TARGETS

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        from peft import EvaConfig, LoraConfig
        from peft.tuners.lora.config import CordaConfig

        opts: LoraOptions = self.options  # type: ignore[assignment]
        corda = opts.init.startswith("corda")
        config = LoraConfig(
            task_type=ctx.task.peft_task_type,
            r=opts.r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=opts.target_modules or self.default_targets(model),
            bias=opts.bias,
            use_rslora=opts.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=self.peft_init(),
            eva_config=EvaConfig() if opts.init == "eva" else None,  # peft's rho 2, tau 0.99
            corda_config=CordaConfig(corda_method="kpm" if opts.init == "corda_kpm" else "ipm")
            if corda
            else None,
            modules_to_save=modules_to_save or None,
        )
        if corda:
            # CorDA's statistics are hooked onto the base layers before peft wraps them.
            preprocess_corda(model, ctx, config, CORDA_BATCHES)
        return config

    def peft_init(self) -> bool | str:
        """peft's `init_lora_weights` for the configured init."""
        init = self.options.init  # type: ignore[attr-defined]
        if init.startswith("corda"):
            return "corda"  # the mode is CordaConfig's
        return True if init == "default" else init

    @property
    def moves_base_weights(self) -> bool:
        return bool(_RESIDUAL_INITS.match(self.options.init))  # type: ignore[attr-defined]

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        from peft import get_peft_model_state_dict

        with warnings.catch_warnings():
            # peft's hint for its own callers (low_cpu_mem_usage with EVA) names no lmtune setting.
            warnings.filterwarnings("ignore", message="lora with eva initialization used with low_cpu_mem")
            adapted = super().apply(model, ctx)
        if self.options.init == "eva" and ctx.init_adapter is None:  # type: ignore[attr-defined]
            initialize_eva(adapted, ctx, EVA_BATCHES)
        if self.moves_base_weights and ctx.init_adapter is None:
            state = get_peft_model_state_dict(adapted)
            self._initial_adapter = {k: v.detach().clone() for k, v in state.items() if ".lora_" in k}
        return adapted

    def save(self, model: nn.Module, directory: Path) -> None:
        super().save(model, directory)
        if self._initial_adapter is not None:
            save_on_untouched_base(model, Path(directory), self._initial_adapter)
        if self.options.init == "eva":  # type: ignore[attr-defined]
            # EVA's A matrices are in the weights; a loader must not ask for training batches again.
            config_file = Path(directory) / "adapter_config.json"
            config = json.loads(config_file.read_text(encoding="utf-8"))
            config.update(init_lora_weights=True, eva_config=None)
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

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


def initialize_eva(model: nn.Module, ctx: MethodContext, count: int) -> None:
    """peft's EVA initialisation of `model`'s LoRA layers on `count` of the run's training batches."""
    from peft.tuners.lora import initialize_lora_eva_weights

    if ctx.training_batches is None:
        raise LmtuneError(
            "lora init eva needs training batches, and this run has none in memory (data.streaming)",
            hint="use another init, or read the training data into memory (data.streaming: false)",
        )
    batches = ctx.training_batches(count)
    try:
        initialize_lora_eva_weights(model, dataloader=batches, show_progress_bar=False)
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise LmtuneError(
            f"lora init eva failed on {model.__class__.__name__}: {first[:300]}",
            hint="use another init (e.g. default)",
        ) from None


def preprocess_corda(model: nn.Module, ctx: MethodContext, config: Any, count: int) -> None:
    """peft's CorDA preprocessing of `model` (the covariance of each target layer's inputs, then
    the covariance-weighted SVD of its weight) over `count` of the run's training batches."""
    import torch
    from peft.tuners.lora.corda import preprocess_corda as peft_preprocess

    if ctx.init_adapter is not None:
        return  # continuing a saved adapter: nothing is initialised
    if ctx.training_batches is None:
        raise LmtuneError(
            "lora init corda needs training batches, and this run has none in memory (data.streaming)",
            hint="use another init, or read the training data into memory (data.streaming: false)",
        )
    batches = ctx.training_batches(count)
    device = next(model.parameters()).device

    def run_model() -> None:
        # peft's covariance hook takes one sequence per forward (it squeezes the batch axis), so
        # each row runs alone, without its padding.
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in batches:
                for row in unpadded_rows(batch):
                    model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in row.items()})
        model.train(was_training)

    try:
        peft_preprocess(model, config, run_model=run_model)
    except (ValueError, RuntimeError) as exc:  # e.g. a singular covariance on too little data
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise LmtuneError(
            f"lora init corda failed on {model.__class__.__name__}: {first[:300]}",
            hint="use more (or more varied) training rows, or another init (e.g. pissa)",
        ) from None


def unpadded_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A collated batch as batch-1 inputs, each cut to its attention mask's positions."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    rows = []
    for i in range(ids.shape[0]):
        keep = mask[i].bool() if mask is not None else slice(None)
        row = {}
        for key, value in batch.items():
            if hasattr(value, "dim") and value.dim() >= 2 and value.shape[:2] == ids.shape[:2]:
                row[key] = value[i : i + 1, keep]
            elif hasattr(value, "dim") and value.dim() >= 1 and value.shape[0] == ids.shape[0]:
                row[key] = value[i : i + 1]
            else:
                row[key] = value
        rows.append(row)
    return rows


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
    config["corda_config"] = None  # nor ask for CorDA's covariance
    scale = 2**0.5 if config.get("use_rslora") else 2  # keeps alpha/r (rsLoRA: alpha/sqrt(r)) as it was
    config["r"] *= 2
    config["lora_alpha"] *= scale
    if config.get("rank_pattern"):
        config["rank_pattern"] = {name: 2 * rank for name, rank in config["rank_pattern"].items()}
    if config.get("alpha_pattern"):
        config["alpha_pattern"] = {name: scale * alpha for name, alpha in config["alpha_pattern"].items()}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
