"""What `precision: auto` resolves to, per device and task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmtune.tasks.base import cpu_has_native_bf16, resolve_precision
from lmtune.tasks.causal_lm import CausalLmTask
from lmtune.tasks.classification import ClassificationTask


def test_auto_on_cpu_is_bf16_only_for_decoders_on_native_bf16_hardware():
    cpu = torch.device("cpu")
    native = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", cpu, CausalLmTask.supports("bf16-on-cpu")) == native
    assert resolve_precision("auto", cpu, ClassificationTask.supports("bf16-on-cpu")) == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, cpu, True) == explicit


def test_native_bf16_detection_matches_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare against")
    flags = cpuinfo.read_text(encoding="utf-8")
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_tile" in flags)


# ---- the inference loop and the table writer every task uses -----------------------------------------
class _Probe(torch.nn.Module):
    """Records the mode each forward pass runs in."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple] = []

    def forward(self, **batch: torch.Tensor) -> None:
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.seen.append((self.training, torch.is_inference_mode_enabled(), autocast, sorted(batch)))


def _pad(features: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor([f["label"] for f in features])}


def test_inference_batches_sort_by_length_and_run_in_eval_inference_and_autocast():
    from lmtune.config import RunConfig
    from lmtune.tasks.base import inference_batches

    task = ClassificationTask(RunConfig.from_dict({"model": "x", "train": {"precision": "bf16"}}))
    features = [{"input_ids": [1] * n, "label": n} for n in (1, 5, 3, 2)]
    model = _Probe().train()
    order = []
    # A batch size may depend on the longest row (rows that fit a memory budget).
    for index, batch in inference_batches(
        task, model, features, _pad, lambda longest: 1 if longest > 4 else 2
    ):
        order.append(index)
        model(**batch)
    assert order == [[1], [2, 3], [0]]
    assert model.seen == [(False, True, torch.bfloat16, ["input_ids"])] * 3  # gold labels dropped
    assert not torch.is_inference_mode_enabled() and not torch.is_autocast_enabled("cpu")
    kept = [sorted(batch) for _, batch in inference_batches(task, model, features, _pad, 4, drop=())]
    assert kept == [["input_ids", "labels"]]


def test_report_tables_escape_cells_and_keep_the_per_label_layout():
    from lmtune.evaluation.report import markdown_table, per_label_table

    scores = {"a|b": {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2}}
    assert per_label_table("label", scores) == [
        "| label | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
        "| a\\|b | 0.500 | 1.000 | 0.667 | 2 |",
    ]
    lines = markdown_table(["text", "n"], [["one\ntwo |three", 3], ["a long text", 4]], left=2, width=11)
    assert lines == ["| text | n |", "|---|---|", "| one two \\|t | 3 |", "| a long text | 4 |"]
    assert markdown_table(["text"], [["abcdef"]], width=3)[-1] == "| abc |"
