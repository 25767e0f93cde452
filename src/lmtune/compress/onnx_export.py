"""ONNX export of a plain (merged or full) model, checked against PyTorch with onnxruntime.

`torch.onnx.export(dynamo=True)` (torch.export + onnxscript) is torch 2.13's supported
exporter and handles BERT-style encoders; batch and sequence axes are dynamic. The graph
returns the logits only. After export the same sample inputs go through PyTorch and
onnxruntime; the largest absolute logit difference is reported, and above `tolerance`
the export fails loudly instead of shipping a model that computes something else.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmtune.errors import LmtuneError

MODEL_NAME = "model.onnx"


class _LogitsOnly(nn.Module):
    """Named tensor inputs in, logits out: the signature ONNX consumers expect."""

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


def export_onnx(
    model: nn.Module,
    tokenizer: Any,
    directory: Path,
    batches: list[dict[str, torch.Tensor]],
    *,
    tolerance: float = 1e-3,
) -> dict[str, Any]:
    """Write `directory/model.onnx` (+ tokenizer, config) and return the parity check.

    `batches` are collated model inputs (the task's collator on real texts); the first one is
    the tracing example, all of them are compared. Use batches with padding and of several
    sizes, so the check covers the dynamic axes and the attention mask.
    """
    from torch.export import Dim

    model = model.to("cpu").eval()
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    if not batches:
        raise LmtuneError("ONNX export needs at least one sample batch", hint="the test set is empty")
    # torch.export specialises a dimension of size 1 to a constant, so trace on a batch with
    # at least two rows and two tokens; the other batches (batch 1 included) check the result.
    example = next((b for b in batches if min(next(iter(b.values())).shape) > 1), None)
    if example is None:
        raise LmtuneError("ONNX export needs a sample batch of two or more rows", hint="add test rows")
    names = list(example)
    batch, seq = Dim("batch"), Dim("sequence")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_NAME
    wrapper = _LogitsOnly(model, names)
    # The exporter prints its progress and warns about optional torchvision ops; keep it quiet.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper,
                tuple(example[n] for n in names),
                str(path),
                dynamo=True,
                input_names=names,
                output_names=["logits"],
                # The wrapper takes its tensors as `*inputs`: one spec per tensor under that name.
                dynamic_shapes={"inputs": tuple({0: batch, 1: seq} for _ in names)},
                external_data=False,
            )
        except Exception as exc:  # the exporter raises many types; the message is what matters
            raise LmtuneError(
                f"ONNX export of {model.__class__.__name__} failed: {str(exc).splitlines()[0][:300]}",
                hint="export without --onnx",
            ) from exc
    tokenizer.save_pretrained(directory)
    if hasattr(model, "config"):
        model.config.save_pretrained(directory)
    max_diff = parity(model, path, batches)
    if not max_diff <= tolerance:
        raise LmtuneError(
            f"ONNX parity check failed: max |logit difference| {max_diff:.2e} > {tolerance:.0e} ({path})",
            hint="the exported graph does not match PyTorch; report this with the model name",
        )
    return {"max_abs_diff": max_diff, "tolerance": tolerance, "inputs": names}


def session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(sess: Any, encoded: dict[str, torch.Tensor]) -> np.ndarray:
    wanted = [i.name for i in sess.get_inputs()]
    return sess.run(["logits"], {n: encoded[n].numpy() for n in wanted})[0]


def parity(model: nn.Module, path: Path, batches: list[dict[str, torch.Tensor]]) -> float:
    """Largest |logit difference| between PyTorch and onnxruntime over `batches`."""
    sess = session(path)
    worst = 0.0
    for encoded in batches:
        with torch.inference_mode():
            expected = model(**encoded).logits.float().numpy()
        got = run_onnx(sess, encoded)
        worst = max(worst, float(np.abs(expected - got).max()))
    return worst


class OnnxModel(nn.Module):
    """An onnxruntime session behind the `model(**batch).logits` call tasks make, for evaluation."""

    def __init__(self, path: Path, config: Any = None) -> None:
        super().__init__()
        self.sess = session(path)
        self.config = config

    def forward(self, **inputs: torch.Tensor) -> Any:
        from types import SimpleNamespace

        logits = run_onnx(self.sess, {k: v.cpu() for k, v in inputs.items()})
        return SimpleNamespace(logits=torch.from_numpy(logits))
