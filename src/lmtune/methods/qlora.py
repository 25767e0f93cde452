"""QLoRA (Dettmers et al., 2023): LoRA adapters on a base model stored in 4-bit NF4.

The linear layers of the loaded model, all but the task head, become bitsandbytes `Linear4bit`
layers (NF4 with double quantization by default: about 0.5 byte per weight instead of 4), and
peft's LoRA trains in full precision on top of them, computing in `compute_dtype`. Only the
adapter (and the head) is saved, in peft's format; loading quantizes the same base again (the
quantization is deterministic) and applies the adapter.

Quantizing after loading keeps this a method like the others, one file; the price is that the
full-precision model passes through CPU memory once while loading. bitsandbytes (>= 0.48) runs
4-bit layers on CPU as well as on CUDA: `pip install lmtune[qlora]`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import MethodContext, ModelBuilder
from lmtune.methods.lora import LoraMethod, LoraOptions

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Output layers stay in full precision: the task head trains (or is tied to the embeddings).
KEEP_FULL_PRECISION = ("lm_head", "classifier", "score", "qa_outputs", "pooler", "heads")


class QloraOptions(LoraOptions):
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        default="all-linear", description="Layers to adapt; QLoRA adapts every linear layer."
    )
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type of the base.")
    double_quant: bool = Field(default=True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="Precision the 4-bit layers compute in."
    )

    init: str = Field(
        default="default",
        description="Adapter initialisation: default (A random, B zero), gaussian, or loftq (A and B from "
        "the SVD of each layer's quantization error, so the 4-bit model starts closer to the "
        "full-precision one; LoftQ, Li et al., 2023).",
    )

    @field_validator("init")
    @classmethod
    def _known_init(cls, value: str) -> str:  # replaces LoRA's list: the base stays quantized
        if value not in ("default", "gaussian", "loftq"):
            raise ValueError(
                f"init {value!r} rewrites the base weights, which qlora holds in 4 bits (the residual "
                "would be quantized again); use init default, gaussian or loftq, or method lora"
            )
        return value


def _bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError:
        raise LmtuneError(
            "method 'qlora' needs bitsandbytes, which is not installed",
            hint="pip install 'lmtune[qlora]'",
        ) from None
    return bitsandbytes


QuantizedHook = Callable[[str, torch.Tensor, nn.Module], None]


def quantize_linear_layers(
    model: nn.Module, options: QloraOptions, keep: tuple[str, ...], on_quantized: QuantizedHook | None = None
) -> int:
    """Replace every `nn.Linear` outside `keep` by a 4-bit `Linear4bit` with the same weights;
    `on_quantized(path, full_precision_weight, layer)` sees each one as it is replaced."""
    bnb = _bitsandbytes()
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_name}.{name}" if parent_name else name
            if type(child) is not nn.Linear or any(part in keep for part in path.split(".")):
                continue
            device = child.weight.device
            layer = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=COMPUTE_DTYPES[options.compute_dtype],
                compress_statistics=options.double_quant,
                quant_type=options.quant_type,
                device="meta",
            )
            weight = child.weight.data.detach().to("cpu", torch.float32)
            layer.weight = bnb.nn.Params4bit(
                weight,
                requires_grad=False,
                compress_statistics=options.double_quant,
                quant_type=options.quant_type,
            )
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.detach().clone(), requires_grad=False)
            # On AVX512-BF16 CPUs, bitsandbytes repacks a layer's weight in place for a faster
            # kernel on its first evaluation forward, converting the quantization constants to
            # bf16; training after an evaluation unpacks them again, not exactly. The base then
            # drifts with every evaluation and a reloaded run predicts differently (1e-4).
            layer.support_avx512bf16_for_cpu = False
            layer = layer.to(device)  # moving a Params4bit quantizes it
            if on_quantized is not None:
                on_quantized(path, weight, layer)
            setattr(parent, name, layer)
            replaced += 1
    return replaced


def dequantize_linear_layers(model: nn.Module) -> int:
    """Replace every 4-bit `Linear4bit` by an fp32 `nn.Linear` holding its de-quantized weights:
    the base exactly as the adapter saw it in training, in full precision."""
    bnb = _bitsandbytes()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state)
            layer = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            layer.weight = nn.Parameter(
                weight.to(torch.float32).reshape(layer.weight.shape), requires_grad=False
            )
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.detach().to(torch.float32), requires_grad=False)
            setattr(parent, name, layer.to(weight.device))
            replaced += 1
    return replaced


@torch.no_grad()
def quantization_error_factors(
    weight: torch.Tensor, layer: nn.Module, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L @ R the best rank-`rank` approximation of weight - dequantized(layer.weight).

    This is LoftQ's one-shot form (peft's `replace_lora_weights_loftq`): the base keeps the 4-bit
    weights that loading builds again from the checkpoint, so the alternating form, which
    re-quantizes W - B A, would train on a base that a reloaded run does not have."""
    bnb = _bitsandbytes()
    dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    error = weight.to(torch.float32) - dequantized.to(torch.float32).reshape(weight.shape)
    u, s, vh = torch.linalg.svd(error, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


@torch.no_grad()
def set_loftq_factors(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Start each LoRA layer over a 4-bit base at its quantization error: scaling * B @ A = L @ R.

    peft's LoftQ assigns B = L and A = R whatever the scaling, which is exact only at alpha = r;
    dividing both by sqrt(scaling) keeps the default alpha = 2r exact too."""
    from peft.tuners.lora import LoraLayer

    set_count = 0
    for path, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base_path = path.split("base_model.model.", 1)[-1]
        if base_path not in factors:
            continue
        left, right = factors[base_path]
        for adapter in module.lora_A:
            root = module.scaling[adapter] ** 0.5
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            a.copy_((right / root).to(a.dtype))
            b.copy_((left / root).to(b.dtype))
        set_count += 1
    if set_count == 0:
        raise LmtuneError("qlora init loftq found no LoRA layer over a 4-bit layer to initialise")
    return set_count


class QloraMethod(LoraMethod, capabilities={"fixed-trainable-set", "peft-adapter", "mergeable"}):
    name: ClassVar[str] = "qlora"
    description: ClassVar[str] = "LoRA on a 4-bit NF4 base via bitsandbytes (about 1/8 of the base memory)."
    Options = QloraOptions
    default_learning_rate: ClassVar[float] = 1e-3

    def peft_init(self) -> bool | str:
        # LoftQ's factors are set after peft wraps the 4-bit layers (`set_loftq_factors`): peft's
        # own loftq init quantizes again on CUDA, and its one-shot variant reads the weights from
        # the checkpoint files on CUDA too; here they come from the weights being quantized.
        return True if self.options.init == "loftq" else super().peft_init()  # type: ignore[attr-defined]

    def _quantize(
        self, model: nn.Module, head_names: tuple[str, ...], on_quantized: QuantizedHook | None = None
    ) -> None:
        options: QloraOptions = self.options  # type: ignore[assignment]
        if quantize_linear_layers(model, options, KEEP_FULL_PRECISION + head_names, on_quantized) == 0:
            raise LmtuneError(
                f"method 'qlora' found no linear layer to quantize in {model.__class__.__name__}",
                hint="use lora for this model",
            )

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        options: QloraOptions = self.options  # type: ignore[assignment]
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        loftq = options.init == "loftq" and ctx.init_adapter is None

        def low_rank_error(path: str, weight: torch.Tensor, layer: nn.Module) -> None:
            factors[path] = quantization_error_factors(weight, layer, options.r)

        heads = ctx.task.head_names + ctx.task.peft_head_names
        self._quantize(model, heads, low_rank_error if loftq else None)
        adapted = super().apply(model, ctx)
        if loftq:
            set_loftq_factors(adapted, factors)
        return adapted

    def load(self, directory: Path, build: ModelBuilder) -> nn.Module:
        from peft import PeftConfig, PeftModel

        base = build(None)
        # The head peft saved beside the adapter stays in full precision, as in training.
        saved = PeftConfig.from_pretrained(str(directory)).modules_to_save or []
        self._quantize(base, tuple(saved))
        return PeftModel.from_pretrained(base, str(directory))

    @classmethod
    def merged(cls, model: nn.Module) -> nn.Module:
        """The adapter merged into the de-quantized base: an fp32 model without bitsandbytes.

        peft's own merge into `Linear4bit` quantizes the sum again (a 4-bit model, and a second
        rounding); here the adapter is lifted off, the 4-bit base is de-quantized to the weights
        training saw, and the adapter is put back on the fp32 base and merged there.
        """
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        name = model.active_adapter
        config = model.peft_config[name]
        state = get_peft_model_state_dict(model, adapter_name=name)
        base = model.unload()
        dequantize_linear_layers(base)
        plain = get_peft_model(base, config, adapter_name=name)
        set_peft_model_state_dict(plain, state, adapter_name=name)
        return super().merged(plain)
