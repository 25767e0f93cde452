"""The data audit finds what was planted: label flips, duplicates, leakage; and never changes input."""

from __future__ import annotations

import csv
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import NEGATIVE, POSITIVE, SUBJECTS, fast_config, run_cli, write_csv

from lmtune.config import RunConfig
from lmtune.data.audit import AuditSettings, nearest_neighbours, read_files
from lmtune.data.audit_report import record_lines, run_audit, write_rows
from lmtune.errors import LmtuneError

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def reviews(n: int, seed: int, start: int = 0) -> list[dict[str, str]]:
    """Distinct short reviews whose sentiment word decides the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        label = "positive" if i % 2 == 0 else "negative"
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append(
            {"text": f"{rng.choice(NAMES)} said {rng.choice(SUBJECTS)} {i} was {word}", "label": label}
        )
    return rows


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """240 training rows with 12 flipped labels, 4 repeated rows and 3 test rows copied from train."""
    root = tmp_path_factory.mktemp("audit")
    train = reviews(240, 0)
    rng = random.Random(1)
    flipped = rng.sample(range(240), 12)
    for i in flipped:
        train[i]["label"] = "negative" if train[i]["label"] == "positive" else "positive"
    repeated = [j for j in range(240) if j not in flipped][:4]
    train += [dict(train[j]) for j in repeated]
    test = reviews(40, 2, start=1000) + [dict(train[j]) for j in (100, 101, 102) if j not in flipped]
    return {
        "train": write_csv(root / "train.csv", train),
        "test": write_csv(root / "test.csv", test),
        # CSV line numbers: the header is line 1.
        "flipped_lines": {i + 2 for i in flipped},
        "repeat_lines": {240 + k + 2 for k in range(len(repeated))},
        "leaked_lines": {40 + k + 2 for k in range(len(test) - 40)},
        "root": root,
    }


def config(planted: dict, **data: object) -> RunConfig:
    raw = {
        "model": "all-MiniLM-L6-v2",
        "task": "classification",
        "data": {"train": str(planted["train"]), "test": str(planted["test"]), "max_length": 64, **data},
    }
    return RunConfig.from_dict(raw)


@pytest.mark.slow
def test_audit_finds_planted_flips_duplicates_and_leakage(planted: dict, tmp_path: Path) -> None:
    cfg = config(planted)
    clean = tmp_path / "clean.csv"
    before = planted["train"].read_bytes()
    result = run_audit(cfg, AuditSettings(), tmp_path / "out", clean)

    found = {f.line for f in result.findings if f.issue == "label"}
    hits = found & planted["flipped_lines"]
    assert len(hits) / len(planted["flipped_lines"]) >= 0.75, (found, planted["flipped_lines"])
    assert len(hits) / max(len(found), 1) >= 0.6, (found, planted["flipped_lines"])
    duplicates = {f.line for f in result.findings if f.issue == "duplicate" and f.split == "train"}
    assert planted["repeat_lines"] <= duplicates
    leaked = {f.line for f in result.findings if f.issue == "leakage"}
    assert leaked == planted["leaked_lines"]
    assert all(f.split == "test" for f in result.findings if f.issue == "leakage")

    rows = csv_rows(tmp_path / "out" / "audit.csv")
    assert len(rows) == len(result.findings)
    assert {"file", "line", "issue", "suggested_label", "confidence", "reason"} <= set(rows[0])
    assert "### Issues found" in (tmp_path / "out" / "audit.md").read_text()
    assert (tmp_path / "out" / "audit_label_quality.png").exists()
    # The cleaned copy drops exactly the flagged label issues and repeats; the input is unchanged.
    assert planted["train"].read_bytes() == before
    kept = csv_rows(clean)
    dropped = {f.line for f in result.findings if f.issue in ("label", "duplicate", "conflicting-duplicate")}
    assert len(kept) == 244 - len(dropped)
    assert result.summary["rows"] == {"train": 244, "test": 43}
    assert result.summary["imbalanced"] is False


def test_nearest_neighbours_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, sims = nearest_neighbours(x, x, 3, exclude_self=True, block=128)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1)[:, :3]
    assert (index == expected).all()
    assert np.allclose(sims, np.take_along_axis(full, expected, axis=1), atol=1e-5)


def test_write_rows_keeps_format_and_order(tmp_path: Path) -> None:
    source = write_csv(
        tmp_path / "in.csv", [{"text": f"t{i}, quoted", "label": str(i % 2)} for i in range(5)]
    )
    n = write_rows(str(source), "auto", {2, 4, 6}, tmp_path / "out.csv")
    assert n == 3
    assert [r["text"] for r in csv_rows(tmp_path / "out.csv")] == [
        "t0, quoted",
        "t2, quoted",
        "t4, quoted",
    ]
    conll = tmp_path / "in.conll"
    conll.write_text("-DOCSTART- O\n\nAlice B-PER\nsings O\n\nBob B-PER\n\nParis B-LOC\nrains O\n")
    assert write_rows(str(conll), "auto", {3, 8}, tmp_path / "out.conll") == 2
    assert (tmp_path / "out.conll").read_text() == "Alice B-PER\nsings O\n\nParis B-LOC\nrains O\n\n"


def ner_file(path: Path, n: int, flipped: set[int]) -> Path:
    rng = random.Random(0)
    places = ["paris", "london", "berlin", "madrid", "rome", "vienna"]
    lines = []
    for i in range(n):
        name, place = rng.choice(NAMES).title(), rng.choice(places).title()
        lines += [f"{name} {'O' if i in flipped else 'B-PER'}", "lives O", "in O", f"{place} B-LOC", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_token_level_audit_finds_flipped_tags(tmp_path: Path) -> None:
    flipped = {5, 17, 40, 66}
    train = ner_file(tmp_path / "train.conll", 90, flipped)
    cfg = RunConfig.from_dict({"model": "all-MiniLM-L6-v2", "task": "ner", "data": {"train": str(train)}})
    result = run_audit(cfg, AuditSettings(), tmp_path / "out")
    # The name is the first token of sentence i, on line 5 * i + 1.
    found = {f.line for f in result.findings if f.issue == "label"}
    expected = {5 * i + 1 for i in flipped}
    assert len(found & expected) >= 3, (found, expected)
    assert all(f.suggested_label == "B-PER" for f in result.findings if f.line in expected)
    assert result.summary["issues"]["truncated"] == {"train": 0}  # windowed, never truncated
    with pytest.raises(LmtuneError, match=r"thorough audit.*class-probabilities"):
        run_audit(cfg, AuditSettings(mode="thorough"), tmp_path / "out2")


def test_thorough_audit_fine_tunes_folds(tmp_path: Path, tiny_bert: str) -> None:
    train = write_csv(tmp_path / "train.csv", reviews(40, 3))
    raw = fast_config(tiny_bert, {"train": train, "validation": train, "test": train}, tmp_path / "unused")
    raw["data"].update(validation=None, test=None)
    raw["train"].update(epochs=1, batch_size=16)
    cfg = RunConfig.from_dict(raw)
    fold_dirs = set(Path(tempfile.gettempdir()).glob("lmtune-audit-folds-*"))
    result = run_audit(cfg, AuditSettings(mode="thorough", folds=2), tmp_path / "out")
    assert result.summary["mode"] == "thorough"
    assert len(result.given_label_probability) == 40
    assert all(0.0 <= p <= 1.0 for p in result.given_label_probability)
    # Each fold's held-out rows got probabilities from a model that never saw them.
    task, records = read_files(cfg)
    assert record_lines(records["train"], task.record_where) == list(range(2, 42))
    assert set(Path(tempfile.gettempdir()).glob("lmtune-audit-folds-*")) == fold_dirs  # removed


def test_train_with_data_audit_writes_its_report(
    tmp_path: Path, tiny_bert: str, sentiment_files: dict
) -> None:
    from lmtune.run import train

    raw = fast_config(tiny_bert, sentiment_files, tmp_path / "run", data={"audit": True})
    raw["train"]["epochs"] = 1
    run = train(RunConfig.from_dict(raw))
    report = (run.directory / "report.md").read_text()
    assert "## Data audit" in report and "### Issues found" in report
    # separable_rows repeat texts: the duplicates are listed with their lines.
    rows = csv_rows(run.directory / "audit.csv")
    assert any(r["issue"] == "duplicate" and r["file"].endswith("train.csv") for r in rows)
    assert run.metrics["data"]["audit"]["rows"]["train"] == 64


def test_cli_audit_and_its_errors(planted: dict, tmp_path: Path, tiny_bert: str, capsys, monkeypatch) -> None:
    args = ["audit", "--model", tiny_bert, "--train", str(planted["train"]), "-o", str(tmp_path / "a")]
    code, stdout, _ = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "label" in stdout and (tmp_path / "a" / "audit.csv").exists()
    bad = [
        (["audit", "--model", tiny_bert, "--train", str(tmp_path / "nope.csv")], "nope.csv"),
        ([*args, "--write-clean", str(planted["train"])], "is the input file"),
        (["audit", "--model", tiny_bert], "no training data given"),
    ]
    for argv, message in bad:
        code, _, stderr = run_cli(argv, capsys, monkeypatch)
        last = stderr.strip().splitlines()[-1]
        assert code == 2 and message in last and last.startswith("error:"), stderr


def test_tasks_without_label_audit_get_duplicates_and_leakage(tmp_path: Path, tiny_bert: str) -> None:
    pairs = [
        {"source": f"sentence number {i} about {NAMES[i % 10]}", "target": f"target {i}"} for i in range(30)
    ]
    train = write_csv(tmp_path / "train.csv", [*pairs, pairs[3]])
    test = write_csv(tmp_path / "test.csv", [pairs[7], {"source": "a new sentence", "target": "t"}])
    raw = {"model": tiny_bert, "task": "seq2seq", "data": {"train": str(train), "test": str(test)}}
    result = run_audit(RunConfig.from_dict(raw), AuditSettings(), tmp_path / "out")
    issues = {(f.issue, f.split) for f in result.findings}
    assert ("duplicate", "train") in issues and ("leakage", "test") in issues
    assert not any(f.issue == "label" for f in result.findings)
    assert "class_balance" not in result.summary
