"""A run's saved per-example predictions: `predictions/SPLIT.jsonl` in the run directory.

Training writes `predictions/validation.jsonl` and `predictions/test.jsonl` from the final
evaluation (`EvalResult.records`: one record per example, in dataset order, each with its
`row`); `lmtune eval RUN --data FILE --save-predictions` writes `predictions/<FILE stem>.jsonl`.
They are what the board lists when a confusion-matrix cell is clicked, and its tables of
mistakes: `prediction_files` finds a run's files, `read_predictions` reads one, filtered.

A record's shape is the task's (see each task's `evaluate`): classification and NER records
carry `gold`, `predicted` and `correct`; QA ones `gold` (the answer texts), `predicted`,
`exact`, `f1`; generative tasks their prompt, reference and generation (no `gold`/`predicted`,
so a filter on those matches none of them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError
from lmtune.io import write_jsonl

PREDICTIONS_DIR = "predictions"
# The splits training writes; `lmtune eval --save-predictions` never overwrites them.
TRAINING_SPLITS = ("validation", "test")


def predictions_path(run_dir: str | Path, split: str) -> Path:
    """Where the predictions of `split` (a split name or an evaluated file's stem) are saved."""
    return Path(run_dir) / PREDICTIONS_DIR / f"{split}.jsonl"


def write_predictions(run_dir: str | Path, split: str, records: Iterable[dict[str, Any]]) -> Path:
    """Write `records` to predictions/SPLIT.jsonl atomically (UTF-8, one JSON object a line)."""
    path = predictions_path(run_dir, split)
    write_jsonl(path, records)
    return path


def check_eval_name(data: str | Path) -> str:
    """The predictions name of an `lmtune eval --data` file (its stem); training's names refused."""
    stem = Path(data).stem
    if stem in TRAINING_SPLITS:
        raise LmtuneError(
            f"--save-predictions would overwrite predictions/{stem}.jsonl, which training wrote",
            hint=f"rename {data} (e.g. to {stem}_2{Path(data).suffix}): its stem names the output file",
        )
    return stem


def prediction_files(run_dir: str | Path) -> dict[str, Path]:
    """The run's prediction files by split name (file stem), validation and test first."""
    folder = Path(run_dir) / PREDICTIONS_DIR
    if not folder.is_dir():
        return {}
    found = {p.stem: p for p in sorted(folder.glob("*.jsonl")) if p.is_file()}
    first = {name: found.pop(name) for name in TRAINING_SPLITS if name in found}
    return {**first, **found}


def _matches(value: Any, wanted: str | None) -> bool:
    """`wanted` against a record's field, compared as strings. A list (multi-label, NER entity
    lists, QA gold answers) matches its joined form `", ".join(...)` or any one member; an NER
    entity dict is named by its type. The empty string matches an empty list."""
    if wanted is None:
        return True
    if isinstance(value, list):
        names = [_name(v) for v in value]
        return wanted == ", ".join(names) or wanted in names
    return value is not None and _name(value) == wanted


def _name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", ""))
    return str(value)


def read_predictions(
    path: str | Path,
    gold: str | None = None,
    predicted: str | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The records of a prediction file whose `gold` and `predicted` fields match the filters
    (None: any; see `_matches`), at most `limit` of them (None: all; 0: only count), in file
    order, and how many records matched in all."""
    path = Path(path)
    if not path.is_file():
        raise LmtuneError(
            f"{path}: no such prediction file", hint="finish training, or `lmtune eval --save-predictions`"
        )
    records: list[dict[str, Any]] = []
    total = 0
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LmtuneError(f"{path}, line {number}: not JSON ({exc.msg})") from None
            if not (_matches(record.get("gold"), gold) and _matches(record.get("predicted"), predicted)):
                continue
            total += 1
            if limit is None or len(records) < limit:
                records.append(record)
    return records, total
