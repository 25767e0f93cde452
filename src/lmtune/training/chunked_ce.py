"""Cross-entropy over a large vocabulary without holding every labelled position's logits.

SFT already projects only the positions whose next token is labelled (`logits_to_keep`). With a
262,144-token vocabulary (Gemma 3) that is still 1 MB of fp32 logits per position, twice over
with their gradient: a 512-token batch of 8 with 400 labelled tokens each holds 3.4 GB of logits
and as much again in gradients. Here the last hidden states of those positions are projected a
chunk at a time, each chunk's loss under activation checkpointing, so the backward pass
recomputes one chunk's logits at a time instead of keeping them all: peak memory for the head
falls from positions x vocabulary to chunk x vocabulary, for one extra head matmul.

No library does this for transformers' models on CPU (Liger's fused linear cross-entropy is a
Triton kernel for CUDA), so it is written here, on plain torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

# Above this many logits (labelled positions x vocabulary) the loss is computed in chunks.
CHUNK_ABOVE = 32 * 1024 * 1024  # 128 MB of fp32 logits
CHUNK_ELEMENTS = 8 * 1024 * 1024  # logits per chunk: 32 MB in fp32 (32 positions of Gemma 3)


def needs_chunks(positions: int, vocabulary: int) -> bool:
    return positions * vocabulary > CHUNK_ABOVE


def _chunk_loss(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:  # Gemma 2's final logit soft-capping, as its forward applies it
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def labelled_loss_sum(
    model: Any, features: dict[str, Any], keep: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The summed cross-entropy of the positions in `keep` against `targets`, projected in chunks.

    The backbone runs once (`logits_to_keep` all false: no position is projected by the model
    itself); its last hidden states, after the final norm, are what the model's own head reads.
    """
    nothing = torch.zeros_like(keep)
    outputs = model(**features, logits_to_keep=nothing, output_hidden_states=True)
    hidden = outputs.hidden_states[-1][keep]
    head = model.get_output_embeddings()
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    vocabulary = head.weight.shape[0]
    step = max(1, CHUNK_ELEMENTS // vocabulary)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], step):
        part = hidden[start : start + step]
        total = total + checkpoint(
            _chunk_loss, head, part, targets[start : start + step], softcap, use_reentrant=False
        )
    return total
