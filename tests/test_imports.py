"""bitsandbytes is imported only where a 4-bit layer is built or loaded.

peft imports bitsandbytes whenever it is installed (its package `__init__`, and LoRA's layer
dispatch), and transformers imports peft; `lmtune.deferred_bitsandbytes.defer_bitsandbytes` holds that back.
Whether a module was imported is process state, so every check runs in a fresh interpreter.
The qlora side (it still imports bitsandbytes, and peft then sees it) is in
tests/methods/test_qlora.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmtune
from lmtune.config import RunConfig
from tests.conftest import fast_config

WARNING = "Failed to load CPU gemm_4bit_forward"
# Prints, after whatever the snippet did, whether bitsandbytes (or any of its modules) is loaded.
REPORT = (
    "\nimport json, sys\n"
    "print(json.dumps({'loaded': sorted(m for m in sys.modules if m.split('.')[0] == 'bitsandbytes')}))\n"
)


def run_python(code: str, cwd: Path) -> tuple[dict, str]:
    """Run `code` in a fresh interpreter; its bitsandbytes report and its stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code + REPORT], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture
def lora_run(tiny_bert, sentiment_files, tmp_path) -> Path:
    cfg = fast_config(tiny_bert, sentiment_files, tmp_path / "lora", train={"epochs": 1})
    return lmtune.train(RunConfig.from_dict(cfg)).directory


def test_lmtune_predict_on_a_lora_run_never_imports_bitsandbytes(lora_run, tmp_path):
    code = (
        "import sys\n"
        "from lmtune.cli import main\n"
        f"sys.argv = ['lmtune', 'predict', {str(lora_run)!r}, '--text', 'the film was great',"
        f" '--output', {str(tmp_path / 'out.jsonl')!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
    )
    report, stderr = run_python(code, tmp_path)
    assert report["loaded"] == [] and WARNING not in stderr, stderr[-2000:]
    row = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert row["label"] in ("positive", "negative")


def test_training_and_predicting_a_lora_run_never_import_bitsandbytes(tiny_bert, sentiment_files, tmp_path):
    cfg = fast_config(tiny_bert, sentiment_files, tmp_path / "run", train={"epochs": 1})
    code = (
        "import lmtune\n"
        f"run = lmtune.train({cfg!r})\n"
        "assert lmtune.load_run(run.directory).predict(['the film was great'])[0]['label']\n"
    )
    report, stderr = run_python(code, tmp_path)
    assert report["loaded"] == [] and WARNING not in stderr, stderr[-2000:]


def test_listing_every_method_never_imports_bitsandbytes(tmp_path):
    report, stderr = run_python("from lmtune.methods import METHODS\nMETHODS.classes()\n", tmp_path)
    assert report["loaded"] == [] and WARNING not in stderr, stderr[-2000:]
