"""What the data audit writes: audit.csv, audit.md with plots, and cleaned copies of the input.

Copies are written row by row from the original file (same format, same columns, original
order), keeping or dropping rows by the line numbers the task's readers reported, so a cleaned
copy reads exactly as the original would have without those rows. The input is never changed:
every file is written to a temporary name and renamed (`lmtune.io`).
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmtune.data.audit import ISSUES, AuditResult, Finding
from lmtune.errors import LmtuneError
from lmtune.io import atomic_path, write_json, write_text

if TYPE_CHECKING:
    from lmtune.config import RunConfig

CSV_COLUMNS = ("file", "line", "split", "issue", "label", "suggested_label", "confidence", "reason", "text")
# Issues whose rows a cleaned copy leaves out. Outliers and truncated rows are shown, not dropped:
# both are often correct data that the user should look at.
DROPPED_BY_CLEANING = ("label", "duplicate", "conflicting-duplicate")


# ---- copies of the input -------------------------------------------------------------------------
def write_rows(source: str, fmt: str, keep: set[int], target: str | Path) -> int:
    """Write the rows (CoNLL: sentences) of `source` whose line/record number is in `keep`."""
    from lmtune.data.conll import is_conll

    if is_conll(source, fmt):
        return _write_conll_blocks(Path(source), keep, Path(target))
    return _write_table_rows(source, fmt, keep, Path(target))


def _write_conll_blocks(source: Path, keep: set[int], target: Path) -> int:
    blocks: list[list[str]] = []
    current: list[str] = []
    first = 0
    lines = source.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate([*lines, ""], start=1):
        if line.strip() and not line.startswith("-DOCSTART-"):
            first = first or number
            current.append(line)
            continue
        if current and first in keep:
            blocks.append(current)
        current, first = [], 0
    with atomic_path(target) as tmp:
        tmp.write_text("".join("\n".join(block) + "\n\n" for block in blocks), encoding="utf-8")
    return len(blocks)


def _write_table_rows(source: str, fmt: str, keep: set[int], target: Path) -> int:
    from lmtune.data.readers import detect_format, read_table

    table = read_table(source, fmt)
    rows = [row for row, number in zip(table.rows, table.row_numbers, strict=True) if number in keep]
    kind = detect_format(source, fmt)
    with atomic_path(target) as tmp:
        if kind in ("csv", "tsv"):
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                writer = csv.DictWriter(fh, table.columns, delimiter="\t" if kind == "tsv" else ",")
                writer.writeheader()
                writer.writerows(rows)
        elif kind == "jsonl":
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        elif kind == "json":
            tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
    return len(rows)


def record_lines(records: Iterable[Any], where: Any) -> list[int]:
    """The line/record number of each record (as `Task.record_where` reports it; -1 if unknown)."""
    from lmtune.data.audit import split_where

    return [line if (line := split_where(where(r))[1]) is not None else -1 for r in records]


def write_clean(source: str, fmt: str, lines: list[int], result: AuditResult, target: str | Path) -> int:
    """A copy of the train file `source` without the records flagged as label issues or duplicates.

    `lines` are the train records' line numbers (`record_lines`); a token-level label issue drops
    its whole sentence. Returns the number of rows written.
    """
    _check_not_input(source, target)
    dropped = {f.row for f in result.findings if f.split == "train" and f.issue in DROPPED_BY_CLEANING}
    return write_rows(source, fmt, {line for i, line in enumerate(lines) if i not in dropped}, target)


def _check_not_input(source: str, target: str | Path) -> None:
    if Path(target).resolve() == Path(source).resolve():
        raise LmtuneError(f"--write-clean {target} is the input file", hint="the input is never changed")


# ---- the thorough mode's folds -------------------------------------------------------------------
class FineTunedFolds:
    """Out-of-fold probabilities by fine-tuning the run's own model and method on k-1 folds.

    Each fold is a real `lmtune train` on a copy of the train file holding the other folds
    (validation carved from it as usual; the held-out fold is its test file), so the audit sees
    the model the user would train. Fold runs live in a temporary directory, removed afterwards.
    """

    def __init__(self, cfg: RunConfig, train_lines: list[int]) -> None:
        self.cfg = cfg
        self.train_lines = train_lines
        self.work = Path(tempfile.mkdtemp(prefix="lmtune-audit-folds-"))
        self.count = 0

    def __call__(self, fit_rows: list[int], held_rows: list[int]) -> np.ndarray:
        from lmtune.ensemble import member_probabilities
        from lmtune.run import train

        self.count += 1
        d = self.cfg.data
        suffix = Path(d.train or "").suffix or ".csv"
        fit_file = self.work / f"fold{self.count}-train{suffix}"
        held_file = self.work / f"fold{self.count}-held{suffix}"
        write_rows(d.train or "", d.format, {self.train_lines[i] for i in fit_rows}, fit_file)
        write_rows(d.train or "", d.format, {self.train_lines[i] for i in held_rows}, held_file)
        raw = self.cfg.to_dict()
        raw["data"].update(train=str(fit_file), validation=None, test=str(held_file), audit=False)
        raw["output_dir"] = str(self.work / f"fold{self.count}")
        raw["train"]["report_to"] = ["none"]
        run = train(type(self.cfg).from_dict(raw, source="audit fold"), overwrite=True)
        _, probs = member_probabilities(run, str(held_file))
        return probs

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.work, ignore_errors=True)


# ---- audit.csv, audit.md -------------------------------------------------------------------------
def write_findings_csv(findings: list[Finding], target: str | Path) -> None:
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_COLUMNS)
        writer.writeheader()
        for f in findings:
            row = asdict(f)
            row["confidence"] = "" if f.confidence is None else round(f.confidence, 4)
            writer.writerow({k: row.get(k) for k in CSV_COLUMNS})


def write_audit(result: AuditResult, out_dir: str | Path) -> list[str]:
    """audit.csv, audit.json and audit.md (with its plots) in `out_dir`; returns audit.md's lines."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_findings_csv(result.findings, out / "audit.csv")
    write_json(out / "audit.json", {"summary": result.summary, "findings": len(result.findings)})
    body = audit_sections(result.summary, result.findings, out, result.given_label_probability)
    lines = ["# Data audit\n", *body]
    write_text(out / "audit.md", "\n".join(lines) + "\n")
    return lines


def audit_sections(
    summary: dict[str, Any], findings: list[Finding], out: Path, given: list[float] | None = None
) -> list[str]:
    """The audit's markdown: counts per issue and split, class balance, the worst rows, plots."""
    from lmtune.evaluation.report import markdown_table, section

    splits = list(summary["rows"])
    counts = [[issue, *(summary["issues"][issue][s] for s in splits)] for issue in ISSUES]
    lines = [
        f"Mode: {summary['mode']}; rows: "
        + ", ".join(f"{s} {n}" for s, n in summary["rows"].items())
        + "; seconds: "
        + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items())
        + "\n",
        *section("Issues found", markdown_table(["issue", *splits], counts)),
    ]
    if "class_balance" in summary:
        verdict = "imbalanced" if summary["imbalanced"] else "balanced enough"
        rows = [[label, n] for label, n in summary["class_balance"].items()]
        lines += section(
            f"Class balance (largest / smallest: {summary['imbalance_ratio']}, {verdict})",
            markdown_table(["label", "train rows"], rows),
        )
    for issue in ISSUES:
        worst = [f for f in findings if f.issue == issue][:15]
        if worst:
            rows = [
                [f"{f.file}:{f.line}", f.text, f.label or "", f.suggested_label or "", f.reason]
                for f in worst
            ]
            header = ["where", "text", "label", "suggested", "why"]
            lines += section(f"{issue} (first {len(worst)})", markdown_table(header, rows, left=5, width=90))
    if given:
        flagged = [f.confidence or 0.0 for f in findings if f.issue == "label"]
        if _probability_histogram(given, len(flagged), out / "audit_label_quality.png"):
            lines.append("![out-of-fold probability of the given label](audit_label_quality.png)\n")
    return lines


def _probability_histogram(given: list[float], flagged: int, path: Path) -> bool:
    from lmtune.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(given, bins=40, range=(0, 1), color="#4477aa")
    ax.set_xlabel("out-of-fold probability of the given label")
    ax.set_ylabel("training rows")
    ax.set_title(f"Label quality ({flagged} rows flagged as label issues)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


# ---- lmtune audit ----------------------------------------------------------------------------------
def run_audit(
    cfg: RunConfig, settings: Any, out_dir: str | Path, clean_copy: str | Path | None = None
) -> AuditResult:
    """`lmtune audit`: audit cfg's files, write audit.csv/.json/.md to `out_dir`, and the cleaned copy."""
    from lmtune.data.audit import audit_records, encoder_for, read_files

    if clean_copy is not None:
        _check_not_input(cfg.data.train or "", clean_copy)
    task, records = read_files(cfg)
    lines = record_lines(records["train"], task.record_where)
    folds = None
    if settings.mode == "thorough":
        task.require("class-probabilities", "the thorough audit", hint="drop --thorough for the fast audit")
        folds = FineTunedFolds(cfg, lines)
    try:
        result = audit_records(task, records, settings, encoder_for(cfg), folds)
    finally:
        if folds is not None:
            folds.close()
    write_audit(result, out_dir)
    if clean_copy is not None:
        write_clean(cfg.data.train or "", cfg.data.format, lines, result, clean_copy)
    return result
