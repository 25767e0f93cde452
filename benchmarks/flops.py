"""The FLOPs a training variant must do per real token: the numerator of an honest MFU.

The 4N / 6N rule counts every parameter, embeddings included, and the same N for variants that
skip work. That over-counts a small encoder badly (MiniLM-L6: 11.7 M of its 22.7 M parameters are
embeddings, which do no matrix products) and gave MFU above 1 for cached layers. Here a token's
FLOPs are what the model must compute for it, whatever the implementation:

- forward: 2 x the matmul weights of each block it runs through (Q, K, V, O and the MLP; grouped
  K/V heads counted at their size), plus attention's sequence-dependent 4 x attended length x hidden
  (QK^T and AV; a causal token attends to half its sequence on average), plus the vocabulary
  projection for the share of tokens that carry a label (SFT) and a per-token head (NER);
- backward: activation gradients (2 x the block's weights + 8 x attended length x hidden) through
  every block from the top down to the lowest one holding a trainable parameter; weight gradients
  (2 x the weights) only for blocks whose own weights train; adapters (LoRA) 6 x their parameters;
- a block whose output is replayed from the frozen-activation cache runs forward once for all
  epochs, so its forward counts 1 / epochs per token;
- padding counts nothing (real-token MFU), and sequence-level heads of a few thousand weights are
  left out (well under 0.1 %).
The peak it is divided by must be measured in the dtype the variant computes in (`peak_for`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Shape:
    """The sizes of a transformer that decide its FLOPs (read from its config.json)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    gated_mlp: bool
    causal: bool
    head_dim: int | None = None  # None: hidden / heads (Gemma 3 sets its own: 4 heads of 256 on 640)

    @classmethod
    def of_model(cls, model_dir: str | Path) -> Shape:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        heads = config["num_attention_heads"]
        causal = config.get("model_type") not in ("bert", "roberta", "distilbert", "xlm-roberta", "deberta")
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            vocab=config["vocab_size"],
            gated_mlp=_has_gate_projection(Path(model_dir)),
            causal=causal,
            head_dim=config.get("head_dim"),
        )

    def block_weights(self) -> int:
        """Matmul weights of one block: what multiplies every token (biases and norms left out)."""
        head = self.head_dim or self.hidden // self.heads
        q, kv = self.heads * head, self.kv_heads * head
        attention = 2 * self.hidden * q + 2 * self.hidden * kv  # Q and O, then K and V
        return attention + (3 if self.gated_mlp else 2) * self.hidden * self.intermediate


def _has_gate_projection(model_dir: Path) -> bool:
    """Gated MLPs (Llama, Gemma, Qwen: gate, up and down projections) have 3 matrices, not 2;
    the checkpoint's weight names say which, whatever the activation is called."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    for file in files[:1]:
        with safe_open(str(file), "pt") as handle:
            names = handle.keys()  # a safetensors handle is not iterable itself
            return any("gate_proj" in key or "gate_up_proj" in key for key in names)
    return False


@dataclass(frozen=True)
class Work:
    """What one training variant computes per real token (see the module docstring)."""

    shape: Shape
    tokens_per_sequence: float
    backward_blocks: int  # blocks from the top down to the lowest one holding a trainable parameter
    weight_grad_blocks: int  # blocks whose own weights train (full fine-tuning: all; LoRA: none)
    adapter_params: int = 0  # trained parameters outside the blocks' weights that multiply tokens
    forward_blocks: float | None = None  # None: every block; fewer with the activation cache
    lm_head_share: float = 0.0  # share of tokens projected onto the vocabulary (their loss needs it)
    token_head_outputs: int = 0  # per-token classifier outputs (NER)

    def flops_per_token(self) -> float:
        s = self.shape
        attended = self.tokens_per_sequence / (2 if s.causal else 1)
        weights = s.block_weights()
        forward_blocks = s.layers if self.forward_blocks is None else self.forward_blocks
        vocabulary = 2 * s.hidden * s.vocab * self.lm_head_share + 2 * s.hidden * self.token_head_outputs
        forward = forward_blocks * (2 * weights + 4 * attended * s.hidden) + vocabulary
        backward = self.backward_blocks * (2 * weights + 8 * attended * s.hidden)
        backward += vocabulary if self.backward_blocks else 0  # the gradient into the last hidden states
        backward += self.weight_grad_blocks * 2 * weights
        return forward + backward + 6 * self.adapter_params

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_for(precision: str, peaks: dict[str, float]) -> float:
    """The GEMM peak (GFLOP/s) of the dtype a variant computes its matrix products in."""
    return peaks["bf16"] if precision in ("bf16", "bf16-autocast") else peaks["fp32"]


def mfu(work: Work, real_tokens_per_s: float, precision: str, peaks: dict[str, float]) -> float:
    return work.flops_per_token() * real_tokens_per_s / (peak_for(precision, peaks) * 1e9)
