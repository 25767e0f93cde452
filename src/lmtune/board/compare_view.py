"""Runs side by side for the board's Compare page, and `compare` / `sweep` output directories.

A comparison puts each run's test metrics (validation when a run has no test split) and
training figures in columns, marks the best run per column by the metric's direction
(`Task.metric_direction`, the rule the Trainer and sweeps rank by), overlays the curves, gives
the points of the Pareto chart and the config keys whose values differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.board.index import IndexedRun
from lmtune.board.run_view import read_curves, render_markdown
from lmtune.search.compare import dir_size_mb
from lmtune.tasks import get_task_class
from lmtune.tasks.base import Task

# Training figures compared, with whether more is better.
_TRAIN_COLUMNS = {
    "trainable_params": ("trainable params", False),
    "runtime_s": ("train time (s)", False),
    "samples_per_second": ("samples/s", True),
    "peak_rss_mb": ("peak RSS (MB)", False),
    "size_mb": ("saved size (MB)", False),
}
_IGNORED_CONFIG_KEYS = {"output_dir"}


def compare_runs(runs: list[IndexedRun]) -> dict[str, Any]:
    """Comparison (docs/board.md) of `runs`, in the order given."""
    values = [_values(run) for run in runs]
    columns = _columns(runs, values)
    metric = next((r.row["metric"]["name"] for r in runs if r.row.get("metric")), None)
    return {
        "runs": [{**run.row, "values": v} for run, v in zip(runs, values, strict=True)],
        "columns": columns,
        "metric": metric,
        "curves": {run.row["path"]: read_curves(run.directory) for run in runs},
        "config_diff": config_diff(runs),
        "pareto": [_pareto_point(run, v) for run, v in zip(runs, values, strict=True)],
    }


def _values(run: IndexedRun) -> dict[str, Any]:
    metrics = run.metrics
    split = "test" if isinstance(metrics.get("test"), dict) else "validation"
    out: dict[str, Any] = {
        f"{split}.{k}": v
        for k, v in (metrics.get(split) or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "n"
    }
    train = metrics.get("train") or {}
    for key in _TRAIN_COLUMNS:
        if key == "size_mb":
            model = run.directory / "model"
            out[key] = dir_size_mb(model) if model.is_dir() else None
        else:
            out[key] = train.get(key)
    return out


def _direction(run: IndexedRun, key: str) -> bool | None:
    if key in _TRAIN_COLUMNS:
        return _TRAIN_COLUMNS[key][1]
    task: type[Task] | None = get_task_class(run.config.task.type) if run.config else None
    name = key.split(".", 1)[-1]
    return task.metric_direction(name)[1] if task else None


def _columns(runs: list[IndexedRun], values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys: list[str] = []
    for v in values:
        keys += [k for k in v if k not in keys and k not in _TRAIN_COLUMNS]
    keys += list(_TRAIN_COLUMNS)
    columns = []
    for key in keys:
        greater = next((_direction(r, key) for r in runs if r.config is not None), None)
        present = [
            (v[key], r.row["path"]) for r, v in zip(runs, values, strict=True) if v.get(key) is not None
        ]
        best = None
        if present and greater is not None and len(present) > 1:
            best = (max if greater else min)(present, key=lambda p: p[0])[1]
        label = _TRAIN_COLUMNS[key][0] if key in _TRAIN_COLUMNS else key
        columns.append({"key": key, "label": label, "greater_is_better": greater, "best": best})
    return columns


def _pareto_point(run: IndexedRun, values: dict[str, Any]) -> dict[str, Any]:
    metric = run.row.get("metric") or {}
    return {
        "path": run.row["path"],
        "name": run.row["name"],
        "metric": metric.get("value"),
        "trainable_params": values.get("trainable_params"),
        "train_time_s": values.get("runtime_s"),
        "peak_rss_mb": values.get("peak_rss_mb"),
        "size_mb": values.get("size_mb"),
    }


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_diff(runs: list[IndexedRun]) -> list[dict[str, Any]]:
    """The config keys (as each run was given them) whose values are not the same in every run."""
    flat = [flatten(run.state.get("config") or {}) for run in runs]
    keys = sorted({k for f in flat for k in f} - _IGNORED_CONFIG_KEYS)
    diff = []
    for key in keys:
        values = {run.row["path"]: f.get(key) for run, f in zip(runs, flat, strict=True)}
        if len({repr(v) for v in values.values()}) > 1:
            diff.append({"key": key, "values": values})
    return diff


def collection_detail(directory: Path, path: str, kind: str, members: list[IndexedRun]) -> dict[str, Any]:
    """CollectionDetail: a `compare` or `sweep` output directory and the runs inside it."""
    markdown_file = directory / ("comparison.md" if kind == "compare" else "summary.md")
    text = markdown_file.read_text(encoding="utf-8", errors="replace") if markdown_file.is_file() else ""
    detail: dict[str, Any] = {
        "path": path,
        "kind": kind,
        "name": path,
        "markdown_html": render_markdown(text, path),
        "runs": [r.row["path"] for r in members],
        "comparison": compare_runs(members),
        "trials": [],
        "history": {"x": [], "y": [], "best": []},
        "importances": {},
    }
    if kind == "sweep":
        detail.update(_sweep_parts(directory, path, members))
    return detail


def _sweep_parts(directory: Path, path: str, members: list[IndexedRun]) -> dict[str, Any]:
    import json

    summary = json.loads((directory / "sweep.json").read_text(encoding="utf-8"))
    by_name = {r.directory.name: r.row["path"] for r in members}
    trials = [
        {
            "number": t.get("trial"),
            "state": t.get("state"),
            "value": t.get("value"),
            "params": t.get("params") or {},
            "path": by_name.get(Path(t["run_dir"]).name) if t.get("run_dir") else None,
        }
        for t in summary.get("trials") or []
    ]
    greater = summary.get("direction") == "maximize"
    history: dict[str, list] = {"x": [], "y": [], "best": []}
    for trial in sorted((t for t in trials if t["state"] == "complete"), key=lambda t: t["number"]):
        best = history["best"][-1] if history["best"] else trial["value"]
        history["x"].append(trial["number"])
        history["y"].append(trial["value"])
        history["best"].append(max(best, trial["value"]) if greater else min(best, trial["value"]))
    return {"trials": trials, "history": history, "importances": summary.get("importances") or {}}
