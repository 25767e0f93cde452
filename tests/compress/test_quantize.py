"""Dynamic int8: the model still predicts, and the safetensors round trip is exact."""

from __future__ import annotations

import torch

from lmtune.compress.quantize import META_NAME, WEIGHTS_NAME, load_int8, quantize_int8, save_int8
from lmtune.run import Run


def test_int8_predicts_and_round_trips(tiny_full_run, separable_files, tmp_path):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    run = Run.load(tiny_full_run, device="cpu")
    q = quantize_int8(run.model)
    assert any(isinstance(m, DynamicLinear) for m in q.modules())
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert any(type(m) is torch.nn.Linear for m in run.model.modules())  # the float model is untouched

    test = run.task.read_labelled(str(separable_files["test"]))
    accuracy = run.task.evaluate(q, run.tokenizer, test, 16).metrics["accuracy"]
    assert accuracy >= 0.75

    save_int8(q, run.tokenizer, tmp_path / "int8")
    files = {p.name for p in (tmp_path / "int8").iterdir()}
    assert {WEIGHTS_NAME, META_NAME, "config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    loaded = load_int8(tmp_path / "int8")
    enc = run.tokenizer(["the film was great", "the show was dreadful"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(loaded(**enc).logits, q(**enc).logits)
