"""ONNX export: onnxruntime computes what PyTorch computes, on dynamic batch and sequence sizes."""

from __future__ import annotations

import pytest

from lmtune.compress.merge import merge
from lmtune.compress.onnx_export import MODEL_NAME, OnnxModel, export_onnx, parity
from lmtune.run import Run


def _batches(run, dataset, sizes):
    from lmtune.compress.export import make_batches

    return [make_batches(run.task, run.tokenizer, dataset, size, 1)[0] for size in sizes]


def test_tiny_onnx_parity_and_evaluation(tiny_full_run, separable_files, tmp_path):
    run = Run.load(tiny_full_run, device="cpu")
    test = run.task.read_labelled(str(separable_files["test"]))
    check = export_onnx(run.model, run.tokenizer, tmp_path / "onnx", _batches(run, test, (4, 1, 9)))
    assert check["max_abs_diff"] <= 1e-3
    assert {"input_ids", "attention_mask"} <= set(check["inputs"])
    # Shapes never seen at export time: the axes are dynamic.
    assert parity(run.model, tmp_path / "onnx" / MODEL_NAME, _batches(run, test, (13, 2))) <= 1e-3
    onnx_model = OnnxModel(tmp_path / "onnx" / MODEL_NAME)
    assert run.task.evaluate(onnx_model, run.tokenizer, test, 8).metrics["accuracy"] >= 0.75


@pytest.mark.slow
def test_minilm_lora_onnx_parity(minilm_lora_run, separable_files, tmp_path):
    run = Run.load(minilm_lora_run, device="cpu")
    merged = merge(run.model, "lora")
    test = run.task.read_labelled(str(separable_files["test"]))
    check = export_onnx(merged, run.tokenizer, tmp_path / "onnx", _batches(run, test, (4, 1, 16)))
    assert check["max_abs_diff"] <= 1e-3
    assert (tmp_path / "onnx" / "tokenizer.json").exists()
