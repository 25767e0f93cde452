"""PNG plots for sweeps (Optuna's matplotlib views) and method comparisons (headless, Agg)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lmtune.evaluation.plots import _pyplot
from lmtune.io import atomic_path


def _save(fig: Any, path: Path) -> str:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return str(path)


def _completed_and_varying(study: Any) -> tuple[list[Any], list[str]]:
    """The completed trials, and the parameters whose value differs between them (sorted)."""
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    names = {k for t in completed for k in t.params}
    varying = sorted(k for k in names if len({str(t.params.get(k)) for t in completed}) > 1)
    return completed, varying


def param_importances(study: Any) -> dict[str, float]:
    """fANOVA importance of each parameter that varied (what param_importances.png draws), for
    sweep.json; {} with fewer than two completed trials or when every trial scored the same."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    completed, varying = _completed_and_varying(study)
    if len(completed) < 2 or not varying:
        return {}
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=varying)
    except (RuntimeError, ValueError):
        return {}
    return {name: round(float(value), 6) for name, value in found.items()}


def sweep_plots(study: Any, out: Path) -> dict[str, str]:
    """Optimisation history, parameter importance, parallel coordinates.

    Returns name -> PNG path, or name -> why it was skipped (too few completed trials, no
    parameter that varied): importance needs two completed trials that differ.
    """
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    _pyplot()
    completed, varying = _completed_and_varying(study)
    plots: dict[str, str] = {}
    enough = len(completed) >= 2 and bool(varying)
    views = {
        "optimisation history": (
            "optimization_history.png",
            lambda: ovm.plot_optimization_history(study),
            bool(completed),
            "no completed trial",
        ),
        "parameter importance": (
            "param_importances.png",
            lambda: ovm.plot_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=0), params=varying
            ),
            enough,
            "needs 2 completed trials with a parameter that varies",
        ),
        "parallel coordinates": (
            "parallel_coordinate.png",
            lambda: ovm.plot_parallel_coordinate(study, params=varying),
            enough,
            "needs 2 completed trials with a parameter that varies",
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
        for name, (filename, draw, possible, why) in views.items():
            if not possible:
                plots[name] = f"skipped: {why}"
                continue
            try:
                plots[name] = _save(draw().figure, out / filename)
            except (RuntimeError, ValueError) as exc:
                # e.g. fANOVA when every trial scored the same ("zero total variance").
                _pyplot().close("all")
                plots[name] = f"skipped: {exc}"
    return plots


def pareto_png(rows: list[dict[str, Any]], metric: str, greater: bool, path: Path) -> str:
    """Metric against trainable parameters (log x); point area grows with training time."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["trainable_params"] for r in rows]
    ys = [r["metric"] for r in rows]
    times = [max(r["runtime_s"] or 0.0, 0.0) for r in rows]
    top = max(times) or 1.0
    sizes = [40 + 460 * t / top for t in times]
    ax.scatter(xs, ys, s=sizes, alpha=0.6, color="tab:blue", edgecolors="black")
    for r in rows:
        ax.annotate(
            r["method"],
            (r["trainable_params"], r["metric"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    front = pareto_front(rows, greater)
    pts = sorted((r["trainable_params"], r["metric"]) for r in rows if r["method"] in front)
    if len(pts) > 1:
        ax.step(
            [p[0] for p in pts],
            [p[1] for p in pts],
            where="post",
            color="tab:red",
            lw=1,
            label="Pareto front",
        )
        ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Quality vs trainable parameters (point size: training time)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pareto_front(rows: list[dict[str, Any]], greater: bool) -> list[str]:
    """Methods no other method beats on both quality and trainable parameters."""

    def better(a: float, b: float) -> bool:
        return a > b if greater else a < b

    front = []
    for r in rows:
        dominated = any(
            o is not r
            and o["trainable_params"] <= r["trainable_params"]
            and not better(r["metric"], o["metric"])
            and (o["trainable_params"] < r["trainable_params"] or better(o["metric"], r["metric"]))
            for o in rows
        )
        if not dominated:
            front.append(r["method"])
    return front


def bars_png(rows: list[dict[str, Any]], metric: str, path: Path) -> str:
    """Per method: the metric and the training time side by side."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, max(3.0, 0.4 * len(rows) + 1.5)))
    names = [r["method"] for r in rows]
    left.barh(names, [r["metric"] for r in rows], color="tab:blue")
    left.set_xlabel(f"validation {metric}")
    left.invert_yaxis()
    right.barh(names, [r["runtime_s"] or 0.0 for r in rows], color="tab:orange")
    right.set_xlabel("training time (s)")
    right.invert_yaxis()
    right.set_yticklabels([])
    fig.suptitle("Methods compared on the same data and budget")
    return _save(fig, path)
