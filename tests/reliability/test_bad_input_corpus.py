"""Every malformed input in corpus/ fails through the real CLI with one clear line and no debris.

corpus/cases.yaml lists the commands; each must exit with code 2, print exactly one line on
stderr (no traceback), name the offending file (and line/record where there is one), and leave
no output behind: the output directory does not exist afterwards, or is unchanged.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import yaml

from lmtune import cli
from lmtune.data.readers import read_table

CORPUS = Path(__file__).parent / "corpus"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))["cases"]
GOOD = {"classification": "good.csv", "token-classification": "good.conll"}


def _snapshot(path: Path) -> dict[str, str]:
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


def _argv(case: dict, out: Path) -> list[str]:
    task = case.get("task", "classification")
    args = ["train"]
    if "config" in case:
        args.append(str(CORPUS / case["config"]))
    model = case.get("model", "all-MiniLM-L6-v2")
    if model is not None:
        args += ["--model", model]
    args += ["--task", task] if "task" in case or "config" not in case else []
    for slot in ("train", "validation", "test"):
        args += [f"--{slot}", str(CORPUS / case.get(slot, GOOD[task]))]
    args += ["--output-dir", str(out)]
    # Small-run defaults come first so a case's own --set (or its config) wins.
    defaults = ["train.report_to=[none]", "data.max_length=16"]
    defaults += [] if "config" in case else ["train.epochs=1"]
    for item in [*defaults, *case.get("set", [])]:
        args += ["--set", item]
    return args


def test_corpus_is_large_and_every_file_is_used():
    assert len(CASES) >= 40
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids))
    used = {case.get(slot) for case in CASES for slot in ("train", "validation", "config", "output")}
    on_disk = {p.name for p in CORPUS.iterdir()} - {"cases.yaml", *GOOD.values()}
    assert on_disk <= used, f"corpus files no case uses: {sorted(on_disk - used)}"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_fails_cleanly(case, tmp_path, capsys, monkeypatch):
    out = CORPUS / case["output"] if "output" in case else tmp_path / "run"
    before = _snapshot(out) if out.exists() else None
    monkeypatch.setattr(sys, "argv", ["lmtune", *_argv(case, out)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    _, err = capsys.readouterr()
    assert exc.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    message = lines[0]
    assert "Traceback" not in err and message.startswith("error: ")
    assert case["expect"].lower() in message.lower(), message
    names = case.get("names") or case.get("train") or case.get("validation")
    assert names in message, f"the message does not name {names!r}: {message}"
    if "at" in case:
        assert case["at"] in message, f"the message does not say where ({case['at']}): {message}"
    if before is None:
        assert not out.exists(), f"partial output left in {out}: {sorted(p.name for p in out.iterdir())}"
    else:
        assert _snapshot(out) == before, "the existing output was changed"


def test_bom_alone_is_not_an_error():
    table = read_table(CORPUS / "bom_unknown_label_column.csv")
    assert table.columns == ["text", "label"] and len(table) == 12


def test_very_long_line_reads(tmp_path):
    long_text = "word " * 400_000  # 2 MB in one field, beyond csv's default field limit
    path = tmp_path / "long.csv"
    path.write_text(f"text,label\n{long_text},positive\nshort,negative\n", encoding="utf-8")
    table = read_table(path)
    assert len(table.rows[0]["text"]) == len(long_text)
    jsonl = tmp_path / "long.jsonl"
    jsonl.write_text(f'{{"text": "{long_text}", "label": "positive"}}\n', encoding="utf-8")
    assert len(read_table(jsonl).rows[0]["text"]) == len(long_text)
