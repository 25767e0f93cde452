"""Counterfactual probes: one template, filled with every value of its placeholders, predicted.

    lmtune probe RUN --template "{name} was a great engineer." --fill name=names.txt

Each `--fill NAME=FILE` gives the values of placeholder `{NAME}` (one per line, blank lines
skipped); with several fills every combination is a row (a cartesian product, capped at
`MAX_PROBE_ROWS`). The run predicts every filled text; the result has, per row, the values, the
predicted label and the class probabilities, and per label the largest probability gap across
rows and which two rows it lies between. A text whose prediction moves with a name, a place or
a pronoun shows a dependence the label should not have.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

MAX_PROBE_ROWS = 10_000
MAX_FILL_FILE_BYTES = 1 << 20  # value lists are names and words: 1 MiB is far beyond any real one


def parse_fills(specs: Sequence[str]) -> dict[str, Path]:
    """`NAME=FILE` flags as {NAME: FILE}; a malformed or repeated NAME is an `LmtuneError`."""
    fills: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path.strip():
            raise LmtuneError(f"--fill {spec!r}: expected NAME=FILE", hint="e.g. --fill name=names.txt")
        if not name.isidentifier():
            raise LmtuneError(f"--fill {spec!r}: '{name}' is not a placeholder name (letters, digits, _)")
        if name in fills:
            raise LmtuneError(f"--fill {name} is given twice", hint="give each placeholder one file")
        fills[name] = Path(path.strip())
    return fills


def read_values(path: Path, name: str) -> list[str]:
    """The distinct values of one fill file, in file order: UTF-8, one per line, bounded in size."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise LmtuneError(f"--fill {name}={path}: the file {what}", hint="give a text file, one value a line")
    # Read one byte past the limit instead of trusting a size taken before the read.
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILL_FILE_BYTES + 1)
    if len(data) > MAX_FILL_FILE_BYTES:
        raise LmtuneError(f"--fill {name}={path}: larger than {MAX_FILL_FILE_BYTES:,} bytes, too long a list")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LmtuneError(f"--fill {name}={path}, line {line}: not valid UTF-8") from None
    # Distinct values only: a repeated one would add a row that can only repeat a prediction.
    values = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not values:
        raise LmtuneError(f"--fill {name}={path}: the file has no values", hint="one value a line")
    return values


def placeholders(template: str) -> list[str]:
    """The distinct `{name}` placeholders of `template`, in order; positional or formatted fields
    (`{}`, `{0}`, `{name!r}`, `{name:>5}`) and unbalanced braces are an `LmtuneError`."""
    names: list[str] = []
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise LmtuneError(f"--template: {exc}", hint="write a literal brace as {{ or }}") from None
    for _, field, spec, conversion in fields:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise LmtuneError(
                f"--template: placeholder {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not a plain {{name}}",
                hint="use named placeholders such as {name}; write a literal brace as {{ or }}",
            )
        if field not in names:
            names.append(field)
    if not names:
        raise LmtuneError(
            "--template has no placeholder", hint='e.g. --template "{name} was a great engineer."'
        )
    return names


def filled_rows(template: str, fills: dict[str, list[str]], max_rows: int = MAX_PROBE_ROWS) -> list[dict]:
    """Every combination of fill values as {"values": {name: value}, "text": filled template}."""
    names = placeholders(template)
    unused = [name for name in fills if name not in names]
    if unused:
        raise LmtuneError(
            f"--fill {unused[0]}: the template has no placeholder {{{unused[0]}}}",
            hint=f"placeholders in the template: {', '.join('{' + n + '}' for n in names)}",
        )
    missing = [name for name in names if name not in fills]
    if missing:
        raise LmtuneError(
            f"placeholder {{{missing[0]}}} has no values", hint=f"pass --fill {missing[0]}=FILE"
        )
    count = math.prod(len(fills[name]) for name in names)
    if count > max_rows:
        sizes = " x ".join(f"{len(fills[n])} {n}" for n in names)
        raise LmtuneError(
            f"the fills make {count:,} texts ({sizes}), more than the {max_rows:,} a probe may predict",
            hint="use shorter value lists or fewer placeholders",
        )
    rows = []
    for combination in itertools.product(*(fills[name] for name in names)):
        values = dict(zip(names, combination, strict=True))
        # format_map never re-reads the values, so braces inside a value stay literal text.
        rows.append({"values": values, "text": template.format_map(values)})
    return rows


def probe_predictions(rows: list[dict], predictions: list[dict], labels: Sequence[str]) -> dict[str, Any]:
    """Per row its prediction and probabilities; per label the largest probability gap across rows."""
    results = []
    for row, prediction in zip(rows, predictions, strict=True):
        predicted = prediction.get("label", prediction.get("labels"))
        results.append({**row, "label": predicted, "scores": prediction["scores"]})
    gaps: dict[str, Any] = {}
    for label in labels:
        high = max(results, key=lambda r: r["scores"][label])
        low = min(results, key=lambda r: r["scores"][label])
        gaps[label] = {
            "gap": round(high["scores"][label] - low["scores"][label], 6),
            "highest": {"values": high["values"], "probability": high["scores"][label]},
            "lowest": {"values": low["values"], "probability": low["scores"][label]},
        }
    predicted = [r["label"] if isinstance(r["label"], str) else "|".join(r["label"]) for r in results]
    largest = max(gaps, key=lambda k: gaps[k]["gap"]) if gaps else None
    return {
        "rows": len(results),
        "results": results,
        "gaps": gaps,
        "largest_gap": {"label": largest, "gap": gaps[largest]["gap"]} if largest else None,
        "predicted_labels": {name: predicted.count(name) for name in dict.fromkeys(predicted)},
    }


def probe(
    run_dir: str | Path,
    template: str,
    fill_specs: Sequence[str],
    *,
    max_rows: int = MAX_PROBE_ROWS,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Fill `template` from the `NAME=FILE` fills and predict every text with the run in `run_dir`.

    The inputs and the run's task are checked before the model is loaded, so a bad flag costs
    nothing.
    """
    from lmtune.run import load_run, read_finished_config
    from lmtune.tasks import get_task_class

    names = placeholders(template)
    fills = {name: read_values(path, name) for name, path in parse_fills(fill_specs).items()}
    rows = filled_rows(template, fills, max_rows)
    task_type = read_finished_config(Path(run_dir)).task.type
    get_task_class(task_type).require(
        "class-probabilities", "probe", hint="probes compare class probabilities: use a classification run"
    )
    run = load_run(run_dir)
    predictions = run.predict([{"text": row["text"]} for row in rows], batch_size)
    result = probe_predictions(rows, predictions, list(run.task.labels or []))
    return {"run": str(run_dir), "template": template, "placeholders": names, **result}


def values_text(values: dict[str, str]) -> str:
    """A row's values for tables: the value alone for one placeholder, else `name=value, ...`."""
    if len(values) == 1:
        return next(iter(values.values()))
    return ", ".join(f"{k}={v}" for k, v in values.items())
