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
    assert resolve_precision("auto", cpu, CausalLmTask.bf16_on_cpu) == native
    assert resolve_precision("auto", cpu, ClassificationTask.bf16_on_cpu) == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, cpu, True) == explicit


def test_native_bf16_detection_matches_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare against")
    flags = cpuinfo.read_text(encoding="utf-8")
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_tile" in flags)
