"""The GPU benchmark (benchmarks/gpu.py) on CPU: its synthetic data and tokenizer, the wheel slimming
its wrapper does, the table, and (slow) a dry run of one lmtune and one Trainer+peft variant."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import gpu

BENCHMARKS = Path(gpu.__file__).parent


def test_synthetic_words_are_one_token_each_and_the_chat_template_renders() -> None:
    tokenizer = gpu.synthetic_tokenizer(600, "decoder")
    record = gpu.sft_records(1, 64, 600, seed=0)[0]
    ids = tokenizer(record["instruction"], add_special_tokens=False)["input_ids"]
    assert len(ids) == len(record["instruction"].split())
    assert tokenizer.unk_token_id not in ids and tokenizer.pad_token_id not in ids
    text = tokenizer.apply_chat_template([{"role": "user", "content": "w10 w11"}], tokenize=False)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == [3, 5, 10, 11, 2]
    encoder = gpu.synthetic_tokenizer(600, "encoder")
    assert encoder("w7 w8")["input_ids"] == [2, 7, 8, 3]  # [CLS] ... [SEP]


def test_synthetic_lengths_are_in_their_ranges() -> None:
    records = gpu.sft_records(200, 512, 49152, seed=0)
    prompts = [len(r["instruction"].split()) for r in records]
    answers = [len(r["output"].split()) for r in records]
    assert min(prompts) >= 8 and max(prompts) <= 128
    assert min(answers) >= 8 and max(answers) <= 384 and 80 < sorted(answers)[100] < 200
    sentences = [len(text.split()) for text, _ in gpu.cls_rows(200, 128, 30522, seed=0)]
    assert min(sentences) >= 3 and max(sentences) <= 126


def test_slim_wheel_keeps_cuda13_and_cpu_libraries_and_their_record(tmp_path: Path) -> None:
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    names = ["cpu", "cuda118", "cuda130", "cuda132", "rocm72"]
    record = [f"bitsandbytes/libbitsandbytes_{n}.so,sha256=x,4" for n in names] + ["bitsandbytes/x.py,,"]
    with zipfile.ZipFile(wheel, "w") as zf:
        for n in names:
            zf.writestr(f"bitsandbytes/libbitsandbytes_{n}.so", b"\0" * 4096)
        zf.writestr("bitsandbytes/x.py", "")
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "\n".join(record))
    assert gpu.slim_wheel(wheel) > 0
    with zipfile.ZipFile(wheel) as zf:
        kept = sorted(n for n in zf.namelist() if n.endswith(".so"))
        lines = zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()
    expected = [f"bitsandbytes/libbitsandbytes_{n}.so" for n in ("cpu", "cuda130", "cuda132")]
    assert kept == expected
    assert [ln.split(",")[0] for ln in lines] == [*expected, "bitsandbytes/x.py"]


def test_cuda_only_variants_are_skipped_with_the_reason_on_cpu() -> None:
    assert gpu.missing(gpu.BY_NAME["lmtune-qlora"], cuda=False) == "skipped: needs CUDA"
    assert gpu.missing(gpu.BY_NAME["lmtune-lora"], cuda=False) is None
    flash = gpu.missing(gpu.BY_NAME["trainer-lora-flash"], cuda=True)
    assert flash is None or flash == "skipped: flash-attn not installed"


def table_rows(markdown: str) -> list[list[str]]:
    rows = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


@pytest.mark.slow
def test_dry_run_of_two_variants_writes_the_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "GPU.md"
    options = ["--dry-run", "--variants", "lmtune-lora,trainer-lora", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), *options, "--work-dir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, *rows = table_rows(out.read_text(encoding="utf-8"))
    assert header == ["variant", "tool", "tokens/s", "samples/s", "peak RSS (GB)", "vs", "notes"]
    assert [r[0].split(":")[0] for r in rows] == ["lmtune-lora", "trainer-lora"]
    assert [r[1] for r in rows] == ["lmtune", "trainer+peft"]
    for row in rows:
        assert float(row[2].replace(",", "")) > 0 and float(row[3].replace(",", "")) > 0 and float(row[4]) > 0
    assert rows[0][5].endswith("x trainer-lora")
    results = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["results"]
    assert {name: r["status"] for name, r in results.items()} == {"lmtune-lora": "ok", "trainer-lora": "ok"}
    assert all(r["timed_steps"] == 1 for r in results.values())
