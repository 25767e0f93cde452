"""Dynamic int8 quantization for CPU inference, stored without pickles.

The maths and kernels are torch's: `torch.ao.quantization.quantize_dynamic` swaps every
`nn.Linear` for an int8 one (weights quantized once, activations per batch, fbgemm/qnnpack
kernels). torch 2.13 marks eager-mode quantization as deprecated in favour of the separate
`torchao` package, which lmtune does not depend on; quantize_dynamic is still the one int8
CPU path inside torch itself, so we use it and silence only its deprecation notice.

Storage: a quantized model's `state_dict` holds packed C++ objects that only `torch.save`
(pickle) can write. We do not ship pickles, so the variant directory holds
`model_int8.safetensors` (int8 weights, their scale and zero point, and every other tensor in
float) next to the model's `config.json`, `quantization.json` and the tokenizer; `load_int8`
rebuilds the float architecture from the config, quantizes it the same way and installs the
stored int8 weights. Loading never executes anything from the files.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmtune.errors import LmtuneError

WEIGHTS_NAME = "model_int8.safetensors"
META_NAME = "quantization.json"
FORMAT = "lmtune-int8-dynamic-v1"


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        yield


def _dynamic_linear_class() -> type:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return DynamicLinear


def quantize_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` with every nn.Linear in dynamic int8 (the float model is untouched)."""
    import copy

    from torch.ao.quantization import quantize_dynamic

    float_model = copy.deepcopy(model).to("cpu").eval()
    with _quiet_deprecation():
        return quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)


def _int8_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    dynamic_linear = _dynamic_linear_class()
    tensors: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, dynamic_linear):
            weight = module.weight()
            if weight.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                raise LmtuneError(f"unexpected int8 scheme {weight.qscheme()} in {name}")
            tensors[f"{prefix}weight.int8"] = weight.int_repr().contiguous()
            tensors[f"{prefix}weight.scale"] = torch.tensor(weight.q_scale(), dtype=torch.float64)
            tensors[f"{prefix}weight.zero_point"] = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
            bias = module.bias()
            if bias is not None:
                tensors[f"{prefix}bias"] = bias.detach().contiguous()
            quantized.append(name)
            continue
        for key, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if value is not None:
                tensors[f"{prefix}{key}"] = value.detach().contiguous()
    return tensors, quantized


def save_int8(model: nn.Module, tokenizer: Any, directory: Path) -> None:
    """Write a `quantize_int8` model as safetensors + config + tokenizer (no pickle)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors, quantized = _int8_tensors(model)
    # Tied weights share storage; safetensors refuses aliases, so each tensor gets its own copy.
    save_file({k: v.clone() for k, v in tensors.items()}, str(directory / WEIGHTS_NAME))
    model.config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    meta = {"format": FORMAT, "dtype": "qint8", "quantized_modules": quantized}
    (directory / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_int8(directory: str | Path) -> nn.Module:
    """Rebuild a model written by `save_int8` (CPU, eval mode)."""
    import transformers
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / META_NAME
    if not meta_path.exists() or not (directory / WEIGHTS_NAME).exists():
        raise LmtuneError(f"{directory} is not an lmtune int8 export", hint=f"expected {META_NAME}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise LmtuneError(f"{meta_path}: unknown format {meta.get('format')!r}", hint=f"expected {FORMAT}")
    config = transformers.AutoConfig.from_pretrained(directory)
    architecture = (config.architectures or [None])[0]
    model_cls = getattr(transformers, architecture or "", None)
    if model_cls is None:
        raise LmtuneError(f"{directory}/config.json: unknown architecture {architecture!r}")
    model = model_cls(config).eval()
    tensors = load_file(str(directory / WEIGHTS_NAME))
    names = set(meta["quantized_modules"])
    floats = {
        k: v
        for k, v in tensors.items()
        if not any(k.startswith(f"{n}.") for n in names)
        and not k.endswith((".int8", ".scale", ".zero_point"))
    }
    missing, _ = model.load_state_dict(floats, strict=False)
    linear_keys = {f"{n}.weight" for n in names} | {f"{n}.bias" for n in names}
    left = [k for k in missing if k not in linear_keys]
    if left:
        raise LmtuneError(
            f"{directory}/{WEIGHTS_NAME}: missing tensors {left[:3]}", hint="re-export the model"
        )
    with _quiet_deprecation():
        from torch.ao.quantization import quantize_dynamic

        model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        modules = dict(model.named_modules())
        for name in names:
            scale = float(tensors[f"{name}.weight.scale"])
            zero_point = int(tensors[f"{name}.weight.zero_point"])
            qweight = torch._make_per_tensor_quantized_tensor(
                tensors[f"{name}.weight.int8"], scale, zero_point
            )
            modules[name].set_weight_bias(qweight, tensors.get(f"{name}.bias"))
    return model
