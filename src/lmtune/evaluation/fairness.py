"""Metrics per group of rows (region, gender, ...) and the gaps between groups (fairlearn).

`lmtune eval RUN --data test.csv --group-column region` reads the group columns from the same
labelled file. They never reach the model: the task reads its records as for a plain `eval`
and hands back the group values of the rows it kept (`Task.read_labelled_columns`), row for row.

Per group (fairlearn's `MetricFrame`): rows, accuracy, macro F1, and per class the selection
rate (share predicted as the class), true-positive rate and false-positive rate, each class
taken one-vs-rest. Gaps: the largest between-group difference of accuracy and macro F1, and
fairlearn's demographic-parity and equalized-odds differences. Those are binary measures: with
two classes they are taken for the positive label (the last label, e.g. "positive" or "1"),
with more they are taken one-vs-rest per class and the largest is reported (the per-class ones
beside it). fairlearn counts a rate without a denominator (a group with no gold positives of a
class) as 0 in equalized odds; the per-group table shows such a rate as missing.

A group is flagged when its accuracy or macro F1 is more than `max_gap` (default 0.05) below
the whole file's: a flag is a prompt to look, not a verdict (its row count is beside it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.data import checks
from lmtune.data.readers import Table
from lmtune.errors import LmtuneError
from lmtune.io import atomic_path

DEFAULT_MAX_GAP = 0.05
MISSING_GROUP = "(missing)"
FLAGGED_METRICS = ("accuracy", "f1_macro")


# ---- reading the group columns ---------------------------------------------------------------
def group_values(table: Table, rows: Sequence[int], columns: Sequence[str]) -> dict[str, list[str]]:
    """The values of `columns` at table rows `rows` (a task's kept rows, in its record order)."""
    if len(set(columns)) != len(columns):
        raise LmtuneError("a --group-column is given twice", hint="name each column once")
    for column in columns:
        if column not in table.columns:
            raise LmtuneError(
                f"{table.path}: no column '{column}' to group by",
                hint=f"columns in the file: {', '.join(table.columns)}",
            )
    return {column: [_group_name(table.rows[i].get(column)) for i in rows] for column in columns}


def _group_name(value: Any) -> str:
    if checks.is_missing(value):
        return MISSING_GROUP
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON/parquet numbers: 1.0 and 1 are one group
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else str(value).strip()
    return text or MISSING_GROUP


# ---- metrics ----------------------------------------------------------------------------------
def _finite(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _metric_functions(labels: Sequence[str]) -> dict[str, Any]:
    """MetricFrame's metrics: accuracy, macro F1, and per class selection rate, TPR and FPR."""
    from fairlearn.metrics import false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score, f1_score

    def one_vs_rest(rate: Any, label: str) -> Any:
        def metric(y_true: np.ndarray, y_pred: np.ndarray) -> float:
            return rate(np.asarray(y_true) == label, np.asarray(y_pred) == label, pos_label=True)

        return metric

    functions: dict[str, Any] = {
        "accuracy": accuracy_score,
        "f1_macro": lambda t, p: f1_score(t, p, labels=list(labels), average="macro", zero_division=0),
    }
    for label in labels:
        functions[f"selection_rate/{label}"] = one_vs_rest(selection_rate, label)
        functions[f"tpr/{label}"] = one_vs_rest(true_positive_rate, label)
        functions[f"fpr/{label}"] = one_vs_rest(false_positive_rate, label)
    return functions


def _row(values: Any, n: int, gold: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """One table row: n, accuracy, f1_macro, {rate: {label: value}} (undefined rates as None)."""
    row: dict[str, Any] = {"n": n, **{m: _finite(values[m]) for m in FLAGGED_METRICS}}
    for rate in ("selection_rate", "tpr", "fpr"):
        row[rate] = {}
        for label in labels:
            positives = int((gold == label).sum())
            undefined = (rate == "tpr" and positives == 0) or (rate == "fpr" and positives == n)
            row[rate][label] = None if undefined else _finite(values[f"{rate}/{label}"])
    return row


def _gaps(y_true: np.ndarray, y_pred: np.ndarray, sf: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    chosen = [labels[-1]] if len(labels) == 2 else list(labels)
    per_class = {
        label: {
            "demographic_parity_difference": _finite(
                demographic_parity_difference(y_true == label, y_pred == label, sensitive_features=sf)
            ),
            "equalized_odds_difference": _finite(
                equalized_odds_difference(y_true == label, y_pred == label, sensitive_features=sf)
            ),
        }
        for label in chosen
    }
    gaps: dict[str, Any] = {}
    for key in ("demographic_parity_difference", "equalized_odds_difference"):
        found = [v[key] for v in per_class.values() if v[key] is not None]
        gaps[key] = max(found) if found else None
    gaps["positive_label" if len(labels) == 2 else "per_class"] = (
        labels[-1] if len(labels) == 2 else per_class
    )
    return gaps


def group_metrics(
    gold: Sequence[str],
    predicted: Sequence[str],
    groups: Sequence[str],
    labels: Sequence[str],
    max_gap: float = DEFAULT_MAX_GAP,
) -> dict[str, Any]:
    """Per-group metrics, gaps and flagged groups of one grouping (see the module docstring)."""
    from fairlearn.metrics import MetricFrame

    if not len(gold) == len(predicted) == len(groups):
        raise ValueError(f"{len(gold)} gold, {len(predicted)} predicted and {len(groups)} group values")
    if not gold:
        raise LmtuneError("no rows to compute group metrics on")
    y_true, y_pred = np.asarray(gold, dtype=object), np.asarray(predicted, dtype=object)
    sf = np.asarray(groups, dtype=object)
    frame = MetricFrame(
        metrics=_metric_functions(labels), y_true=y_true, y_pred=y_pred, sensitive_features=sf
    )
    overall = _row(frame.overall, len(y_true), y_true, labels)
    by_group = {
        str(name): _row(frame.by_group.loc[name], int((sf == name).sum()), y_true[sf == name], labels)
        for name in frame.by_group.index
    }
    differences = frame.difference()
    gaps = {f"{m}_difference": _finite(differences[m]) for m in FLAGGED_METRICS}
    gaps.update(_gaps(y_true, y_pred, sf, labels))
    return {
        "labels": list(labels),
        "groups": len(by_group),
        "overall": overall,
        "by_group": by_group,
        "gaps": gaps,
        "max_gap": max_gap,
        "flagged": _flagged(overall, by_group, max_gap),
    }


def _flagged(overall: dict[str, Any], by_group: dict[str, dict[str, Any]], max_gap: float) -> list[dict]:
    flagged = []
    for name, row in by_group.items():
        for metric in FLAGGED_METRICS:
            value, whole = row[metric], overall[metric]
            if value is not None and whole is not None and whole - value > max_gap:
                below = round(whole - value, 6)
                entry = {"group": name, "metric": metric, "value": value, "overall": whole}
                flagged.append({**entry, "below_by": below, "n": row["n"]})
    return flagged


def evaluate_groups(
    run_dir: str | Path,
    path: str | Path,
    columns: Sequence[str],
    max_gap: float = DEFAULT_MAX_GAP,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """`Run.evaluate(path)` plus `groups`: per group column, `group_metrics` of its values.

    The task's capability, the file and its group columns are checked before the model loads
    (a task built from config.yaml reads them, as `Run.load` would build it), so a typo is cheap.
    """
    from lmtune.run import load_run, read_finished_config
    from lmtune.tasks import get_task_class

    if not columns:
        raise LmtuneError("no --group-column given")
    cfg = read_finished_config(Path(run_dir))
    task_cls = get_task_class(cfg.task.type)
    hint = "group metrics are computed for classification runs (single-label)"
    task_cls.require("group-metrics", "eval --group-column", hint=hint)
    dataset, values = task_cls(cfg).read_labelled_columns(str(path), list(columns))
    run = load_run(run_dir)
    result, gold, predicted = run.task.evaluate_rows(
        run.model, run.tokenizer, dataset, batch_size or run.batch_size
    )
    for column, column_values in values.items():
        if len(column_values) != len(gold):  # a task hook that dropped or added rows: a bug
            raise RuntimeError(f"{len(column_values)} values of '{column}' for {len(gold)} rows")
    labels = list(run.task.labels or [])
    groups = {column: group_metrics(gold, predicted, values[column], labels, max_gap) for column in columns}
    return {**result.metrics, "details": result.details, "groups": groups}


# ---- presenting -------------------------------------------------------------------------------
def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one grouping's table (overall first); binary: the positive label's
    rates, more classes: per class TPR and FPR (up to 4 classes, to stay readable)."""
    from lmtune.evaluation.report import format_cell

    labels = report["labels"]
    shown = [labels[-1]] if len(labels) == 2 else list(labels)[:4]
    header = ["group", "n", "accuracy", "f1_macro"]
    header += [f"{rate} {label}" for label in shown for rate in ("selection", "tpr", "fpr")]
    flagged = {f["group"] for f in report["flagged"]}
    rows = []
    for name, row in [("(all rows)", report["overall"]), *report["by_group"].items()]:
        cells = [f"{name} (!)" if name in flagged else name, str(row["n"])]
        cells += [format_cell(row[m]) for m in FLAGGED_METRICS]
        for label in shown:
            cells += [format_cell(row[rate][label]) for rate in ("selection_rate", "tpr", "fpr")]
        rows.append(cells)
    return header, rows


def groups_png(groups: dict[str, dict[str, Any]], path: Path) -> None:
    """Accuracy and macro F1 per group, one panel per group column, the overall value as a line."""
    from lmtune.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(len(groups), 1, figsize=(6, 2.8 * len(groups)), squeeze=False)
    for ax, (column, report) in zip(axes[:, 0], groups.items(), strict=True):
        names = list(report["by_group"])
        x = np.arange(len(names))
        for offset, metric, colour in ((-0.2, "accuracy", "tab:blue"), (0.2, "f1_macro", "tab:orange")):
            heights = [report["by_group"][g][metric] or 0.0 for g in names]
            ax.bar(x + offset, heights, width=0.4, label=metric, color=colour)
            overall = report["overall"][metric]
            if overall is not None:
                ax.axhline(overall, color=colour, linestyle="--", linewidth=1)
        ax.set_xticks(x, labels=names, rotation=30 if len(names) > 4 else 0, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"by {column} (dashed: all rows)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
