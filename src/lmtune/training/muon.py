"""Muon for the hidden layers' weight matrices, AdamW for everything else (`train.optimizer: muon`).

Muon (Jordan et al., 2024) replaces each update of a weight matrix by its orthogonalised momentum
(Newton-Schulz iterations: every singular direction moves by the same amount); torch ships it as
`torch.optim.Muon`, for 2-D parameters only. As in Keller Jordan's and Moonlight's recipe, what is
not a hidden weight matrix trains with AdamW: embeddings (and an output layer tied to them), the
task head, biases, norms.

Which parameters Muon takes is decided by what they are, never by a method's name: the weight of
a linear map (`nn.Linear`, GPT-2's `Conv1D`) inside the model's layers. So LoRA's A and B (and
DoRA's, and the bottleneck adapters' down and up projections) go to Muon: each is the matrix of a
linear map on the hidden features, whose update orthogonalises like any other. Adapter tensors that
are not a map's matrix go to AdamW: OFT's packed skew-symmetric triangles, BOFT's 4-D blocks,
LoHa's and LoKr's factors (the update is their element-wise or Kronecker product, not a product
of maps), VeRA's and IA3's vectors, prompt embeddings.

Muon's steps use Moonlight's RMS matching (`adjust_lr_fn: match_rms_adamw`, the update scaled by
0.2 sqrt(max(rows, columns))), so both halves take the same learning rate, the one each method
already has for AdamW, and one schedule drives both.
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any

import torch
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import is_head_parameter

# The optimizer_args Muon takes (train.weight_decay is its weight decay, as for AdamW).
ARGUMENTS = ("momentum", "nesterov", "ns_steps", "eps", "adjust_lr_fn")
ADJUSTMENTS = ("match_rms_adamw", "original")


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over two: torch's Muon for the hidden weight matrices, AdamW for the rest.

    The Trainer, its learning-rate schedule, Accelerate and the checkpoints see one optimizer. Its
    param_groups are the two inner optimizers' own group dicts, so a scheduled learning rate reaches
    both; its state dict holds both states, so a resumed run goes on where it stopped.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer | None) -> None:
        self.inner = {"muon": muon, **({"adamw": adamw} if adamw is not None else {})}
        super().__init__([group for optimizer in self.inner.values() for group in optimizer.param_groups], {})
        self._link()

    def _link(self) -> None:
        """Point at the inner optimizers' own group dicts and states, not copies: whatever sets a
        group's lr (the schedule) sets it for the optimizer that steps. Loading a state dict replaces
        an optimizer's groups and state (Accelerate does so when it places one on its device)."""
        self.param_groups = [group for optimizer in self.inner.values() for group in optimizer.param_groups]
        self.state = ChainMap(*(optimizer.state for optimizer in self.inner.values()))  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.inner.values():
            optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.inner.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != set(self.inner):
            raise ValueError(f"a Muon+AdamW state holds {sorted(self.inner)}, not {sorted(state_dict)}")
        for name, optimizer in self.inner.items():
            optimizer.load_state_dict(state_dict[name])
        self._link()


def muon_parameters(model: nn.Module, head_names: tuple[str, ...]) -> set[int]:
    """The ids of the trainable parameters Muon takes: the weights of linear maps in the model's
    layers, not in the task head (`head_names`) and not the input or output embeddings."""
    from transformers.pytorch_utils import Conv1D

    embeddings = {id(p) for layer in _embeddings(model) for p in layer.parameters()}
    chosen: set[int] = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, (nn.Linear, Conv1D)) or weight is None or weight.ndim != 2:
            continue
        if weight.requires_grad and id(weight) not in embeddings and not is_head_parameter(name, head_names):
            chosen.add(id(weight))
    return chosen


def _embeddings(model: nn.Module) -> list[nn.Module]:
    found = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            layer = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(layer, nn.Module):
            found.append(layer)
    return found


def settings(arguments: dict[str, Any]) -> dict[str, Any]:
    """torch.optim.Muon's keyword arguments from `train.optimizer_args` (ValueError: a bad key)."""
    unknown = sorted(set(arguments) - set(ARGUMENTS))
    if unknown:
        known = ", ".join(ARGUMENTS)
        raise ValueError(f"optimizer muon takes optimizer_args {known}, not {', '.join(unknown)}")
    out: dict[str, Any] = {"adjust_lr_fn": str(arguments.get("adjust_lr_fn", "match_rms_adamw"))}
    if out["adjust_lr_fn"] not in ADJUSTMENTS:
        raise ValueError(f"optimizer_args.adjust_lr_fn must be one of {', '.join(ADJUSTMENTS)}")
    for key, kind in (("momentum", float), ("ns_steps", int), ("eps", float)):
        if key in arguments:
            out[key] = kind(arguments[key])
    if "nesterov" in arguments:
        # The config reads optimizer_args as numbers or strings: false arrives as 0 or "false".
        out["nesterov"] = str(arguments["nesterov"]).lower() not in ("0", "false", "no")
    return out


def build(
    model: nn.Module,
    adamw_cls: type,
    adamw_kwargs: dict[str, Any],
    *,
    arguments: dict[str, Any],
    weight_decay: float,
    decay_names: set[str],
    head_names: tuple[str, ...],
) -> MuonWithAdamW:
    """Muon over the hidden weight matrices, `adamw_cls` (the Trainer's AdamW with its arguments)
    over the other trainable parameters, decayed as the Trainer decays them (not biases, norms)."""
    to_muon = muon_parameters(model, head_names)
    if not to_muon:
        raise LmtuneError(
            "train.optimizer muon found no trainable weight matrix of a linear layer in the model's "
            "layers: the method trains only vectors, embeddings, the head or other adapter tensors",
            hint="use muon with a method that trains linear layers (full, freeze, lora) or another optimizer",
        )
    matrices, decayed, other = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in to_muon:
            matrices.append(param)
        else:
            (decayed if name in decay_names else other).append(param)
    muon_kwargs = settings(arguments)
    muon = torch.optim.Muon(matrices, lr=adamw_kwargs["lr"], weight_decay=weight_decay, **muon_kwargs)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    return MuonWithAdamW(muon, adamw_cls(groups, **adamw_kwargs) if groups else None)
