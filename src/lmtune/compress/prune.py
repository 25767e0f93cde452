"""Pruning: unstructured magnitude pruning and structured attention-head pruning.

- Unstructured: `torch.nn.utils.prune.global_unstructured` with L1 magnitude over every
  `nn.Linear` weight of the transformer body (the task head is left whole: it is tiny and
  pruning it costs accuracy for nothing), then `prune.remove` makes the zeros permanent.
  Global pruning over all tensors at once removes exactly round(sparsity * n) weights.
- Heads: transformers 5 dropped `PreTrainedModel.prune_heads`, so the surgery is written here
  with its surviving helper `prune_linear_layer`: the pruned heads' rows of query/key/value
  and columns of the attention output projection are cut out. Heads are ranked by a
  data-free importance score, the summed L2 norm of the head's query/key/value rows and output
  columns (Michel et al. 2019 use head-mask gradients; the weight norm needs no data pass and
  ranks heads similarly on fine-tuned encoders). A layer always keeps at least one head.
  Supported: BERT-style attention (`query`/`key`/`value` + `output.dense`).

A head-pruned model has uneven layers that `from_pretrained` cannot express, so its
directory carries `pruned_heads.json`; `load_head_pruned` rebuilds the architecture, cuts
the same heads and loads the safetensors weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import is_head_parameter

PRUNED_HEADS_NAME = "pruned_heads.json"


# ---- unstructured -----------------------------------------------------------------------------
def prunable_linears(model: nn.Module, head_names: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    """Every nn.Linear of the body (not the task head)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not is_head_parameter(name, head_names)
    ]


def prune_unstructured(
    model: nn.Module, sparsity: float, head_names: tuple[str, ...], *, permanent: bool = True
) -> dict[str, Any]:
    """Zero the smallest-magnitude share `sparsity` of the body's linear weights.

    With `permanent=False` torch's mask stays attached (weight = weight_orig * mask), so a
    recovery fine-tune cannot regrow pruned weights; call `make_permanent` after it.
    """
    from torch.nn.utils import prune

    if not 0 < sparsity < 1:
        raise LmtuneError(f"--prune {sparsity}: sparsity must be between 0 and 1", hint="e.g. --prune 0.5")
    linears = prunable_linears(model, head_names)
    if not linears:
        raise LmtuneError(f"{model.__class__.__name__} has no linear layers to prune")
    params = [(module, "weight") for _, module in linears]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    if permanent:
        make_permanent(model)
    return {"target_sparsity": sparsity, "sparsity": measured_sparsity(model, head_names)}


def make_permanent(model: nn.Module) -> None:
    """Fold torch's pruning masks into the weights and drop the re-parametrisation."""
    from torch.nn.utils import prune

    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def measured_sparsity(model: nn.Module, head_names: tuple[str, ...]) -> float:
    """Share of exact zeros among the body's linear weights."""
    zeros = total = 0
    for _, module in prunable_linears(model, head_names):
        zeros += int((module.weight == 0).sum())
        total += module.weight.numel()
    return zeros / total if total else 0.0


# ---- attention heads --------------------------------------------------------------------------
def _attention_blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Linear]]:
    """(self-attention module, its output projection) per layer, in layer order."""
    from lmtune.methods.base import find_layers

    _, layers = find_layers(model)
    blocks = []
    for layer in layers:
        attention = getattr(layer, "attention", None)
        inner = getattr(attention, "self", None)
        output = getattr(getattr(attention, "output", None), "dense", None)
        if inner is None or output is None or not all(hasattr(inner, k) for k in ("query", "key", "value")):
            raise LmtuneError(
                f"head pruning supports BERT-style attention; {model.__class__.__name__} has another layout",
                hint="use unstructured pruning (--prune SPARSITY) instead",
            )
        blocks.append((inner, output))
    return blocks


def head_importance(model: nn.Module) -> list[list[float]]:
    """Per layer, per remaining head: L2 norm of its q/k/v rows plus its output columns."""
    scores = []
    with torch.no_grad():
        for inner, output in _attention_blocks(model):
            size = inner.attention_head_size
            row = []
            for h in range(inner.num_attention_heads):
                cut = slice(h * size, (h + 1) * size)
                norm = sum(float(getattr(inner, k).weight[cut].norm()) for k in ("query", "key", "value"))
                row.append(norm + float(output.weight[:, cut].norm()))
            scores.append(row)
    return scores


def choose_heads(scores: list[list[float]], count: int) -> dict[int, list[int]]:
    """The `count` least important heads overall, never all heads of one layer."""
    total = sum(len(row) for row in scores)
    removable = total - len(scores)
    if count < 1 or count > removable:
        raise LmtuneError(
            f"--prune-heads {count}: the model has {total} heads in {len(scores)} layers",
            hint=f"choose between 1 and {removable} (each layer keeps one head)",
        )
    ranked = sorted((s, layer, h) for layer, row in enumerate(scores) for h, s in enumerate(row))
    chosen: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if sum(len(v) for v in chosen.values()) == count:
            break
        if len(chosen.get(layer, [])) < len(scores[layer]) - 1:
            chosen.setdefault(layer, []).append(head)
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def remove_heads(model: nn.Module, heads: dict[int, list[int]]) -> None:
    """Cut the given heads (layer -> head indices) out of the attention projections, in place."""
    from transformers.pytorch_utils import prune_linear_layer

    blocks = _attention_blocks(model)
    for layer, drop in heads.items():
        if not drop:
            continue
        inner, output = blocks[layer]
        size = inner.attention_head_size
        keep = [h for h in range(inner.num_attention_heads) if h not in set(drop)]
        index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
        for key in ("query", "key", "value"):
            setattr(inner, key, prune_linear_layer(getattr(inner, key), index, dim=0))
        new_output = prune_linear_layer(output, index, dim=1)
        output.weight, output.bias = new_output.weight, new_output.bias
        output.in_features = new_output.in_features
        inner.num_attention_heads = len(keep)
        inner.all_head_size = len(keep) * size


def prune_heads(model: nn.Module, count: int) -> dict[int, list[int]]:
    """Remove the `count` least important attention heads; returns what was removed."""
    heads = choose_heads(head_importance(model), count)
    remove_heads(model, heads)
    return heads


def save_head_pruned(model: nn.Module, tokenizer: Any, heads: dict[int, list[int]], directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    record = {"pruned_heads": {str(k): v for k, v in heads.items()}}
    (directory / PRUNED_HEADS_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def load_head_pruned(directory: str | Path) -> nn.Module:
    """Rebuild a head-pruned model written by `save_head_pruned` (safetensors weights only)."""
    import transformers
    from safetensors.torch import load_file

    directory = Path(directory)
    record = json.loads((directory / PRUNED_HEADS_NAME).read_text(encoding="utf-8"))
    config = transformers.AutoConfig.from_pretrained(directory)
    model_cls = getattr(transformers, (config.architectures or [""])[0], None)
    if model_cls is None:
        raise LmtuneError(f"{directory}/config.json: unknown architecture {config.architectures!r}")
    model = model_cls(config)
    remove_heads(model, {int(k): v for k, v in record["pruned_heads"].items()})
    state = {}
    for path in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(path)))
    model.load_state_dict(state, strict=False)
    return model.eval()
