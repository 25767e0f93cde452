"""Bottleneck adapters: Houlsby et al. (2019) and Pfeiffer et al. (2021), written here.

No library in lmtune's stack implements them (peft has no bottleneck adapters; the
`adapters` package is not a dependency), so this file holds the module, its insertion and
its save/load format.

An adapter is `h + up(act(down(h)))` with `down: d -> d/reduction_factor` and `up` back to
`d`; `up` starts at zero, so before training the adapted model computes exactly what the
base model computes. It is inserted without editing model code: the adapter becomes a
child module of the sub-module whose output it transforms (so the base weights keep their
names) and a forward hook applies it to that output. Placement follows the reference code
(google-research/adapter-bert, AdapterHub): on the output of a sub-layer's projection
after its dropout, before the residual sum and LayerNorm. For BERT-family blocks that is
the output of `attention.output.dropout` and `output.dropout`; for Llama-style decoders
(pre-norm, no dropout module) the output of `self_attn.o_proj` and `mlp.down_proj`.

- `adapter-houlsby`: two adapters per layer, after attention and after the feed-forward.
- `adapter-pfeiffer`: one adapter per layer, after the feed-forward.

Trainable: adapters, the task head and (as in both papers, `train_layer_norms`) every
layer norm. The run's `model/` holds only those tensors (`adapter_model.safetensors`) and
`adapter_config.json` (method, options, base model); loading rebuilds the base model,
inserts the adapters and loads exactly those tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import Method, MethodContext, ModelBuilder, find_layers, freeze_all, unfreeze_head

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
ADAPTER_NAME = "bottleneck_adapter"

# Where adapters go, relative to one transformer block; the first path present wins.
ATTENTION_SITES = (
    "attention.output.dropout",  # BERT, RoBERTa, MiniLM, ELECTRA...
    "self_attn.o_proj",  # Llama, Mistral, Qwen2, SmolLM
    "attention.out_lin",  # DistilBERT
    "attn.c_proj",  # GPT-2
)
FFN_SITES = (
    "output.dropout",  # BERT family
    "mlp.down_proj",  # Llama family
    "ffn.lin2",  # DistilBERT
    "mlp.c_proj",  # GPT-2
)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class AdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reduction_factor: int = Field(
        default=16, ge=1, description="Hidden size divided by this is the adapter's bottleneck width."
    )
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field(
        default="relu", description="Activation inside the bottleneck."
    )
    train_layer_norms: bool = Field(
        default=True, description="Also train every layer norm (as in the papers)."
    )


class BottleneckAdapter(nn.Module):
    """h + up(act(down(h))), with `up` initialised to zero (identity at the start)."""

    def __init__(self, hidden_size: int, reduction_factor: int, non_linearity: str) -> None:
        super().__init__()
        bottleneck = max(1, hidden_size // reduction_factor)
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden.to(self.down.weight.dtype)))).to(hidden.dtype)


def _apply_adapter(module: nn.Module, _inputs: Any, output: Any) -> Any:
    adapter = getattr(module, ADAPTER_NAME)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def adapter_sites(model: nn.Module, placement: tuple[str, ...]) -> list[nn.Module]:
    """The sub-modules whose outputs get an adapter, for every transformer block."""
    _, layers = find_layers(model)
    sites = []
    for block in layers:
        named = dict(block.named_modules())
        for kind in placement:
            candidates = ATTENTION_SITES if kind == "attention" else FFN_SITES
            path = next((p for p in candidates if p in named), None)
            if path is None:
                raise LmtuneError(
                    f"bottleneck adapters do not know where the {kind} output of "
                    f"{block.__class__.__name__} is (looked for {', '.join(candidates)})",
                    hint="use lora or ia3 for this model",
                )
            sites.append(named[path])
    return sites


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = (
        getattr(config, "hidden_size", None)
        or getattr(config, "dim", None)
        or getattr(config, "n_embd", None)
    )
    if not size:
        raise LmtuneError(f"cannot find the hidden size of {model.__class__.__name__} for adapters")
    return int(size)


def is_norm(module: nn.Module) -> bool:
    kind = module.__class__.__name__
    return isinstance(module, nn.LayerNorm) or kind.endswith(("LayerNorm", "RMSNorm"))


class _AdapterMethod(Method, capabilities={"fixed-trainable-set", "multi-task"}):
    refusals: ClassVar[dict[str, str]] = {
        "mergeable": "it adds bottleneck adapter modules, which cannot be folded into base weights",
    }
    Options = AdapterOptions
    default_learning_rate: ClassVar[float] = 1e-3
    placement: ClassVar[tuple[str, ...]]

    def insert_adapters(self, model: nn.Module, options: AdapterOptions) -> int:
        """Attach an adapter to every site; returns how many were inserted."""
        width = hidden_size(model)
        reference = next(model.parameters())
        sites = adapter_sites(model, self.placement)
        for site in sites:
            if hasattr(site, ADAPTER_NAME):
                raise LmtuneError(f"{model.__class__.__name__} already has bottleneck adapters")
            adapter = BottleneckAdapter(width, options.reduction_factor, options.non_linearity)
            site.add_module(ADAPTER_NAME, adapter.to(device=reference.device))
            site.register_forward_hook(_apply_adapter)
        return len(sites)

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        opts: AdapterOptions = self.options  # type: ignore[assignment]
        self.insert_adapters(model, opts)
        freeze_all(model)
        for name, param in model.named_parameters():
            if f"{ADAPTER_NAME}." in name:
                param.requires_grad_(True)
        if opts.train_layer_norms:
            for module in model.modules():
                if is_norm(module):
                    for param in module.parameters():
                        param.requires_grad_(True)
        unfreeze_head(model, ctx.task.head_names)
        return model

    def save(self, model: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: param.detach().cpu().contiguous()
            for name, param in model.named_parameters()
            if param.requires_grad or f"{ADAPTER_NAME}." in name
        }
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        from lmtune.models import packaged_hub_id

        base = getattr(getattr(model, "config", None), "_name_or_path", None)
        (directory / CONFIG_NAME).write_text(
            json.dumps(
                {
                    "method": self.name,
                    "options": self.options.model_dump(),
                    "base_model": packaged_hub_id(base) or base,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )

    def load(self, directory: Path, build: ModelBuilder) -> nn.Module:
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / WEIGHTS_NAME).exists() or not (directory / CONFIG_NAME).exists():
            raise LmtuneError(f"{directory} holds no bottleneck adapter ({WEIGHTS_NAME}, {CONFIG_NAME})")
        saved = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
        if saved.get("method") != self.name:
            raise LmtuneError(f"{directory} holds a '{saved.get('method')}' adapter, not '{self.name}'")
        options = AdapterOptions(**saved.get("options", {}))
        model = build(None)
        self.insert_adapters(model, options)
        state = load_file(str(directory / WEIGHTS_NAME))
        params = dict(model.named_parameters())
        unknown = sorted(set(state) - set(params))
        missing = sorted(n for n in params if f"{ADAPTER_NAME}." in n and n not in state)
        if unknown or missing:
            raise LmtuneError(
                f"{directory / WEIGHTS_NAME} does not match the model "
                f"(unknown: {unknown[:3]}, missing: {missing[:3]})",
                hint="load it with the base model and options it was trained with",
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if params[name].shape != tensor.shape:
                    raise LmtuneError(
                        f"{name}: saved shape {tuple(tensor.shape)} != model {tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor.to(params[name].dtype))
        return model


class HoulsbyAdapterMethod(_AdapterMethod):
    name: ClassVar[str] = "adapter-houlsby"
    description: ClassVar[str] = "Bottleneck adapters after attention and FFN in every layer (Houlsby)."
    placement: ClassVar[tuple[str, ...]] = ("attention", "ffn")


class PfeifferAdapterMethod(_AdapterMethod):
    name: ClassVar[str] = "adapter-pfeiffer"
    description: ClassVar[str] = "One bottleneck adapter after the FFN in every layer (Pfeiffer)."
    placement: ClassVar[tuple[str, ...]] = ("ffn",)
