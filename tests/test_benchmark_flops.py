"""The MFU numerator of the benchmarks (benchmarks/flops.py) counts what a variant must compute."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from flops import Shape, Work, mfu


@pytest.fixture(scope="module")
def minilm(minilm_path: str) -> Shape:
    return Shape.of_model(minilm_path)


def test_shape_of_the_packaged_models(minilm: Shape, smollm_path: str) -> None:
    assert (minilm.layers, minilm.hidden, minilm.intermediate, minilm.causal) == (6, 384, 1536, False)
    assert minilm.block_weights() == 4 * 384 * 384 + 2 * 384 * 1536
    smol = Shape.of_model(smollm_path)
    assert smol.causal and smol.gated_mlp and smol.kv_heads == 3
    # Grouped K/V heads: K and V project to 3 of 9 heads' width.
    assert smol.block_weights() == 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536


def test_gemma_heads_are_counted_at_their_own_width(gemma_path: str) -> None:
    gemma = Shape.of_model(gemma_path)
    assert (gemma.heads, gemma.kv_heads, gemma.head_dim, gemma.hidden) == (4, 1, 256, 640)
    # Q and O: 640 x 1,024 each; K and V: 640 x 256 each; gated MLP 3 x 640 x 2,048.
    assert gemma.block_weights() == 2 * 640 * 1024 + 2 * 640 * 256 + 3 * 640 * 2048


def test_counts_by_hand(minilm: Shape) -> None:
    s, layers, w = 10.0, 6, minilm.block_weights()
    fwd = layers * (2 * w + 4 * s * 384)
    act = layers * (2 * w + 8 * s * 384)
    assert Work(minilm, s, backward_blocks=0, weight_grad_blocks=0).flops_per_token() == pytest.approx(fwd)
    lora = Work(minilm, s, backward_blocks=layers, weight_grad_blocks=0, adapter_params=1000)
    assert lora.flops_per_token() == pytest.approx(fwd + act + 6000)
    full = Work(minilm, s, backward_blocks=layers, weight_grad_blocks=layers)
    assert full.flops_per_token() == pytest.approx(fwd + act + layers * 2 * w)
    # Embeddings do no matmul: the honest count stays well under 6N of all 22.7 M parameters.
    assert full.flops_per_token() < 0.5 * 6 * 22.7e6


def test_cached_blocks_and_the_peak_dtype(minilm: Shape) -> None:
    plain = Work(minilm, 12, backward_blocks=1, weight_grad_blocks=1)
    cached = Work(minilm, 12, backward_blocks=1, weight_grad_blocks=1, forward_blocks=1 + 5 / 3)
    assert cached.flops_per_token() < plain.flops_per_token()
    peaks = {"fp32": 400.0, "bf16": 1600.0}
    assert mfu(plain, 1000, "bf16", peaks) == pytest.approx(mfu(plain, 1000, "fp32", peaks) / 4)
