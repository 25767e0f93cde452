"""Method comparison: `lmtune compare --methods lora,bitfit,... --output-dir DIR`.

Every method trains on the same data, model and budget (the same config, only `method.name`
differs; `steps` gives every method the same optimizer steps), each at its own default learning
rate, or with a small per-method learning-rate sweep; with `seeds` each row is the mean and
standard deviation of that many seeds. A row whose validation metric was still rising at the
last evaluation is marked as not converged. Each method runs in its own process (`lmtune train`
/ `lmtune sweep`), so the peak resident memory reported is that method's own (Python, torch,
model and training state; the differences between methods are what matters). Re-running the
command reuses finished runs.

Writes DIR/comparison.{md,csv,json}, DIR/pareto.png (metric vs trainable parameters) and
DIR/methods.png, and a recommendation computed from the numbers.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lmtune.config import RunConfig, set_dotted
from lmtune.errors import LmtuneError
from lmtune.evaluation.report import format_cell
from lmtune.io import write_json, write_text

# A per-method sweep searches the learning rate this factor either side of the method's default.
LR_SPAN = 4.0
# `--budget early-stopping` without a cap: this many epochs at most (patience ends most runs sooner).
EARLY_STOPPING_MAX_EPOCHS = 20


# `--budget auto`: the optimizer steps that the slow starters among the default methods needed to
# converge (within half a point of their best; benchmarks/convergence.py, docs/method_comparison.md):
# AUTO_EPOCHS passes over the training set, at least AUTO_MIN_STEPS and at most AUTO_MAX_STEPS.
AUTO_EPOCHS, AUTO_MIN_STEPS, AUTO_MAX_STEPS = 3.0, 600, 1500


def auto_steps(train_rows: int, batch_size: int, accumulation: int = 1) -> int:
    """`--budget auto`'s optimizer steps for a training set of `train_rows` examples."""
    per_epoch = -(-train_rows // (batch_size * accumulation))
    return min(AUTO_MAX_STEPS, max(AUTO_MIN_STEPS, round(AUTO_EPOCHS * per_epoch)))


def parse_budget(budget: str | None, steps: int | None = None) -> dict[str, Any] | None:
    """`steps:N`, `time:SECONDS`, `early-stopping[:MAX_EPOCHS]`, `auto` or `epochs` as {kind,
    value}; None (and `epochs`): the config's own epochs; `auto` is resolved to steps once the
    training set is read (`resolve_auto_budget`). `steps` is the older `--steps N` spelling."""
    if steps is not None:
        if budget is not None:
            raise LmtuneError("give --budget or --steps, not both", hint="--budget steps:N")
        budget = f"steps:{steps}"
    if budget is None or budget == "epochs":
        return None
    if budget == "auto":
        return {"kind": "auto", "value": None}
    kind, _, value = budget.partition(":")
    try:
        if kind == "steps" and int(value) >= 1:
            return {"kind": "steps", "value": int(value)}
        if kind == "time" and float(value) > 0:
            return {"kind": "time", "value": float(value)}
        if kind == "early-stopping":
            cap = int(value) if value else EARLY_STOPPING_MAX_EPOCHS
            if cap >= 1:
                return {"kind": "early-stopping", "value": cap}
    except ValueError:
        pass
    raise LmtuneError(
        f"--budget {budget!r}: expected steps:N, time:SECONDS, early-stopping[:MAX_EPOCHS], auto or epochs",
        hint="e.g. --budget steps:300, --budget time:120, --budget early-stopping:10, --budget auto",
    )


def default_budget(base: dict[str, Any]) -> str:
    """What `compare` spends without --budget or --steps: the config's epochs where it sets them
    (train.epochs or train.max_steps), else `auto`, so that slow-starting methods are not
    judged after one short pass."""
    train = base.get("train") or {}
    return "epochs" if "epochs" in train or train.get("max_steps") else "auto"


def resolve_auto_budget(base: dict[str, Any], method: str, out: Path) -> dict[str, Any]:
    """`auto` as steps:N for this config's training set (its rows, batch size and accumulation)."""
    from lmtune.tasks import get_task_class

    cfg = RunConfig.from_dict(_method_config(base, method, out / "probe", None), source="compare")
    if cfg.data.train is None:
        raise LmtuneError("--budget auto needs data.train", hint="give --train FILE or a budget in steps")
    records, _ = get_task_class(cfg.task.type)(cfg).read_records(str(cfg.data.train), "train")
    steps = auto_steps(len(records), cfg.train.batch_size, cfg.train.gradient_accumulation_steps)
    return {"kind": "steps", "value": steps, "auto": True, "train_rows": len(records)}


def apply_budget(base: dict[str, Any], budget: dict[str, Any] | None) -> None:
    """Give every method the same budget: optimizer steps, training seconds, or epochs until
    validation stops improving (evaluated every epoch, the config's patience or 2)."""
    if budget is None:
        return
    kind, value = budget["kind"], budget["value"]
    if kind == "steps":  # the same optimizer steps for every method, whatever its epochs
        set_dotted(base, ["train", "max_steps"], value)
    elif kind == "time":
        set_dotted(base, ["train", "max_time_s"], value)
    else:
        train = base.get("train") or {}
        if train.get("eval_strategy") == "no" or train.get("early_stopping_patience", 2) is None:
            raise LmtuneError(
                "--budget early-stopping needs evaluations and a patience",
                hint="drop train.eval_strategy=no / train.early_stopping_patience=null",
            )
        set_dotted(base, ["train", "epochs"], value)
        set_dotted(base, ["train", "max_steps"], None)


def dir_size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 3)


def variant_label(method: str, setting: tuple[str, Any] | None) -> str:
    """A row's name: the method, and with `--across` the value it was paired with."""
    return method if setting is None else f"{method}/{setting[1]}"


def _method_config(
    base: dict[str, Any],
    method: str,
    out: Path,
    per_method_sweep: int | None,
    setting: tuple[str, Any] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    from lmtune.methods import get_method_class

    raw = copy.deepcopy(base)
    set_dotted(raw, ["method", "name"], method)
    if setting is not None:
        set_dotted(raw, setting[0].split("."), setting[1])
    raw["output_dir"] = str(out / _dir_name(variant_label(method, setting)))
    if seed is not None:  # one of several seeds: its own run directory
        set_dotted(raw, ["train", "seed"], seed)
        raw["output_dir"] += f"-seed{seed}"
    if per_method_sweep:
        lr = raw.get("train", {}).get("learning_rate") or get_method_class(method).default_learning_rate
        raw["sweep"] = {
            "sampler": "tpe",
            "n_trials": per_method_sweep,
            "pruner": "none",
            "space": {
                "train.learning_rate": {
                    "type": "float",
                    "low": lr / LR_SPAN,
                    "high": lr * LR_SPAN,
                    "log": True,
                }
            },
        }
    return raw


def _dir_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:300]


def _run_method(raw: dict[str, Any], method: str, out: Path, per_method_sweep: int | None) -> dict[str, Any]:
    """Train one method (a row's label) in a subprocess; returns its row (status ok/skipped/failed)."""
    from lmtune.training.tracking import EXPERIMENT_ENV, TRACKING_DIR_ENV

    config_path = out / "configs" / f"{Path(raw['output_dir']).name}.yaml"
    write_text(config_path, yaml.safe_dump(raw, sort_keys=False))
    run_dir = Path(raw["output_dir"])
    if per_method_sweep:
        command = [sys.executable, "-m", "lmtune", "sweep", str(config_path), "--output-dir", str(run_dir)]
    else:
        command = [sys.executable, "-m", "lmtune", "train", str(config_path)]
    env = {
        **os.environ,
        TRACKING_DIR_ENV: str(out.resolve()),
        EXPERIMENT_ENV: f"compare-{out.resolve().name}",
    }
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    row: dict[str, Any] = {"method": method, "run_dir": str(run_dir)}
    if proc.returncode != 0:
        started = (run_dir / "run.json").exists() or any(run_dir.glob("trial-*/run.json"))
        # Exit code 2 is an LmtuneError; before anything ran it means the method does not apply.
        row["status"] = "skipped" if proc.returncode == 2 and not started else "failed"
        row["reason"] = _last_error_line(proc.stderr or proc.stdout)
        return row
    if per_method_sweep:
        summary = json.loads((run_dir / "sweep.json").read_text(encoding="utf-8"))
        if not summary.get("best"):
            return {**row, "status": "failed", "reason": "no trial of the learning-rate sweep completed"}
        run_dir = Path(summary["best"]["run_dir"])
        row["run_dir"] = str(run_dir)
        row["sweep_trials"] = len(summary["trials"])
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    resolved = RunConfig.from_yaml(run_dir / "config.yaml")
    t = metrics["train"]
    metric = resolved.train.metric_for_best_model
    row.update(
        status="ok",
        metric_name=metric,
        metric=metrics.get("validation", {}).get(metric),
        test_metric=metrics.get("test", {}).get(metric),
        trainable_params=t["trainable_params"],
        trainable_percent=t["trainable_percent"],
        runtime_s=t["runtime_s"],
        samples_per_second=t["samples_per_second"],
        peak_rss_mb=t["peak_rss_mb"],
        size_on_disk_mb=dir_size_mb(run_dir / "model"),
        learning_rate=resolved.train.learning_rate,
        epochs=t.get("epochs_completed"),
        converged=_converged(run_dir, metric, resolved.task.type),
    )
    return row


# Batch-1 forwards timed per model: enough for a stable median on CPU, a few seconds per method.
LATENCY_BATCHES, LATENCY_REPETITIONS = 16, 30


def forward_latency(run_dir: Path) -> dict[str, float | None]:
    """Median CPU wall time (ms) of one batch-1 forward on the run's test rows, as trained
    (`latency_ms`) and with the adapter merged into the base (`merged_latency_ms`, for methods
    that keep a separate adapter and can merge it; None otherwise)."""
    from lmtune.compress import merge as merge_mod
    from lmtune.compress.export import latency, make_batches, run_splits
    from lmtune.methods import get_method_class
    from lmtune.run import load_run

    run = load_run(run_dir)
    splits = run_splits(run)
    rows = splits.get("test") if len(splits.get("test") or []) else splits.get("validation")
    if rows is None or not len(rows):
        return {"latency_ms": None, "merged_latency_ms": None}
    batches = make_batches(run.task, run.tokenizer, rows, 1, min(len(rows), LATENCY_BATCHES))
    model = run.model.eval()
    unmerged, _ = latency(model, batches, LATENCY_REPETITIONS)
    method = get_method_class(run.config.method.name)
    merged = None
    if method.supports("peft-adapter") and method.supports("mergeable"):
        merged, _ = latency(
            merge_mod.merge(model, run.config.method.name).eval(), batches, LATENCY_REPETITIONS
        )
    return {"latency_ms": unmerged, "merged_latency_ms": merged}


def _converged(run_dir: Path, metric: str, task_type: str) -> bool | None:
    """False when the validation metric still improved by more than a tolerance (half a point on
    [0, 1] metrics, 0.5 % otherwise) between the last two evaluations; None with fewer than two."""
    from lmtune.tasks import get_task_class

    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    log = run_dir / "train_log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    values = [record[key] for record in map(json.loads, lines) if isinstance(record.get(key), int | float)]
    if len(values) < 2:
        return None
    greater = get_task_class(task_type).metric_direction(metric)[1]
    gain = (values[-1] - values[-2]) * (1 if greater else -1)
    tolerance = 0.005 if all(0 <= v <= 1 for v in values) else 0.005 * abs(values[-2])
    return gain <= tolerance


def combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for several seeds of a method: means, the metric's standard deviation, and every
    seed's value; a failed seed makes the row failed (with its reason)."""
    import statistics

    if len(runs) == 1:
        return runs[0]
    failed = next((r for r in runs if r["status"] != "ok"), None)
    if failed is not None:
        return {**failed, "run_dir": runs[0]["run_dir"]}
    row = dict(runs[0])
    averaged = ("metric", "test_metric", "runtime_s", "samples_per_second", "peak_rss_mb", "size_on_disk_mb")
    for key in (*averaged, "epochs", "latency_ms", "merged_latency_ms"):
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.fmean(values) if values else None
        if key in ("metric", "test_metric") and len(values) > 1:
            row[f"{key}_std"] = statistics.stdev(values)
    row["seeds"] = [r.get("metric") for r in runs]
    row["run_dirs"] = [r["run_dir"] for r in runs]
    flags = [r.get("converged") for r in runs]
    row["converged"] = None if None in flags else all(flags)
    return row


def recommend(rows: list[dict[str, Any]], greater: bool) -> dict[str, Any]:
    """Best quality, best quality per trainable parameter, fastest within one point of the best."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("metric") is not None]
    if not ok:
        return {}
    sign = 1.0 if greater else -1.0
    best = max(ok, key=lambda r: sign * r["metric"])
    # "One point": 0.01 on metrics that live in [0, 1] (accuracy, F1); a loss (lower is better)
    # 1 % of the best; 1.0 on other scales (BLEU, ROUGE x 100).
    if all(0.0 <= r["metric"] <= 1.0 for r in ok):
        point = 0.01
    else:
        point = 0.01 * abs(best["metric"]) if not greater else 1.0
    close = [r for r in ok if sign * (best["metric"] - r["metric"]) <= point + 1e-12]
    fastest = min(close, key=lambda r: r["runtime_s"])

    def per_parameter(row: dict[str, Any]) -> float:
        params = max(row["trainable_params"], 1)
        # Higher is better: metric per parameter; lower is better: the smaller metric x parameters.
        return row["metric"] / params if greater else -row["metric"] * params

    per_param = max(ok, key=per_parameter)
    return {
        "best_quality": best["method"],
        "best_quality_per_trainable_parameter": per_param["method"],
        "fastest_within_one_point": fastest["method"],
        "one_point": round(point, 6),
    }


def _settings(across: tuple[str, list[Any]] | None) -> list[tuple[str, Any] | None]:
    """The values `--across KEY=V1,V2` pairs with every method (None: no second axis)."""
    if across is None:
        return [None]
    key, values = across
    if len(key.split(".")) < 2 or not values:
        raise LmtuneError(
            f"--across {key}: give a dotted config key and values", hint="task.algorithm=dpo,orpo"
        )
    if len({str(v) for v in values}) != len(values):
        raise LmtuneError(f"--across {key} lists a value twice")
    return [(key, value) for value in values]


def _ranking_metric(
    base: dict[str, Any], method: str, out: Path, settings: list, across: tuple[str, list[Any]] | None
) -> tuple[str, bool]:
    """The one metric every row is ranked by; a bad `--across` value fails here, before training."""
    from lmtune.search.sweep import objective_metric

    metrics = set()
    for setting in settings:
        raw = _method_config(base, method, out / "probe", None, setting)
        metrics.add(objective_metric(RunConfig.from_dict(raw, source="compare")))
    if len(metrics) > 1:
        raise LmtuneError(
            f"--across {across[0] if across else ''}: the values are ranked by different metrics "
            f"({', '.join(sorted(m for m, _ in metrics))})",
            hint="set train.metric_for_best_model to one metric for all of them",
        )
    return metrics.pop()


def compare(
    base: dict[str, Any],
    methods: list[str] | None,
    output_dir: str | Path,
    per_method_sweep: int | None = None,
    across: tuple[str, list[Any]] | None = None,
    seeds: int = 1,
    steps: int | None = None,
    budget: str | None = None,
    latency: bool = True,
) -> dict[str, Any]:
    """Train each method (with `across`, each method x value of one more config key; `seeds`
    times each) on the same config and budget (`parse_budget`); time each finished model's
    forward (unmerged and merged, `latency`); write the comparison table, plots and
    recommendation."""
    from lmtune.methods import METHODS
    from lmtune.search.plots import bars_png, pareto_front, pareto_png

    out = Path(output_dir)
    base = copy.deepcopy(base)
    base.pop("sweep", None)
    if seeds < 1 or (steps is not None and steps < 1):
        raise LmtuneError(f"--seeds {seeds} / --steps {steps}: both must be at least 1")
    spent = parse_budget(budget if budget is not None or steps is not None else default_budget(base), steps)
    chosen = methods or METHODS.names()
    for name in chosen:
        METHODS.get(name)  # unknown names fail here, with a suggestion, before anything trains
    if spent is not None and spent["kind"] == "auto":
        spent = resolve_auto_budget(base, chosen[0], out)
    apply_budget(base, spent)
    if len(set(chosen)) != len(chosen):
        raise LmtuneError("--methods lists a method twice")
    settings = _settings(across)
    metric, greater = _ranking_metric(base, chosen[0], out, settings, across)
    out.mkdir(parents=True, exist_ok=True)
    first_seed = int(
        RunConfig.from_dict(_method_config(base, chosen[0], out, None), source="compare").train.seed
    )
    rows = []
    for name in chosen:
        for setting in settings:
            runs = []
            for k in range(seeds):
                seed = first_seed + k if seeds > 1 else None
                raw = _method_config(base, name, out, per_method_sweep, setting, seed)
                row = _run_method(raw, variant_label(name, setting), out, per_method_sweep)
                if latency and row["status"] == "ok":
                    row.update(forward_latency(Path(row["run_dir"])))
                runs.append(row)
            rows.append(combined(runs))
    ok = [r for r in rows if r["status"] == "ok" and r.get("metric") is not None]
    plots = {}
    if ok:
        plots["pareto"] = pareto_png(ok, metric, greater, out / "pareto.png")
        plots["bars"] = bars_png(ok, metric, out / "methods.png")
    advice = recommend(rows, greater)
    front = pareto_front(ok, greater) if ok else []
    result = {
        "metric": metric,
        "greater_is_better": greater,
        "across": across[0] if across else None,
        "per_method_sweep": per_method_sweep,
        "seeds": seeds,
        "steps": spent["value"] if spent and spent["kind"] == "steps" else None,
        "budget": spent,
        "rows": rows,
        "pareto_front": front,
        "recommendation": advice,
        "plots": plots,
    }
    write_json(out / "comparison.json", result)
    _write_table(out, rows, metric, advice, across[0] if across else None, spent)
    return result


COLUMNS = [
    ("method", "method"),
    ("status", "status"),
    ("metric", "validation"),
    ("test_metric", "test"),
    ("trainable_params", "trainable params"),
    ("trainable_percent", "trainable %"),
    ("runtime_s", "train time (s)"),
    ("samples_per_second", "samples/s"),
    ("peak_rss_mb", "peak RSS (MB)"),
    ("size_on_disk_mb", "saved size (MB)"),
    ("latency_ms", "latency b1 (ms)"),
    ("merged_latency_ms", "merged b1 (ms)"),
    ("learning_rate", "learning rate"),
    ("epochs", "epochs"),
    ("converged", "converged"),
]


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "converged":
        return {True: "yes", False: "no", None: "-"}[row.get(key)]
    if f"{key}_std" in row:
        return f"{format_cell(row[key])} ± {format_cell(row[f'{key}_std'])}"
    return format_cell(row.get(key))


def budget_text(budget: dict[str, Any] | None) -> str:
    """The budget every method had, in words, for the table's heading."""
    if budget is None:
        return "the config's epochs"
    kind, value = budget["kind"], budget["value"]
    if kind == "steps" and budget.get("auto"):
        return (
            f"{value} optimizer steps (`auto` for {budget['train_rows']} training rows: {AUTO_EPOCHS:g} "
            f"epochs, at least {AUTO_MIN_STEPS} and at most {AUTO_MAX_STEPS} steps)"
        )
    return {"steps": f"{value} optimizer steps", "time": f"{value:g} s of training"}.get(
        kind, f"until validation stops improving, at most {value} epochs"
    )


def _write_table(
    out: Path,
    rows: list[dict[str, Any]],
    metric: str,
    advice: dict[str, Any],
    across: str | None,
    budget: dict[str, Any] | None = None,
) -> None:
    with open(out / "comparison.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([key for key, _ in COLUMNS] + ["reason"])
        for r in rows:
            writer.writerow([r.get(key) for key, _ in COLUMNS] + [r.get("reason", "")])
    lines = [
        f"# Method{f' x {across}' if across else ''} comparison (validation/test {metric})\n",
        f"Every method's budget: {budget_text(budget)}.\n",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|---|" + "---:|" * (len(COLUMNS) - 2),
    ]
    for r in rows:
        if r["status"] == "ok":
            lines.append("| " + " | ".join(_cell(r, key) for key, _ in COLUMNS) + " |")
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        lines += ["", "Not compared:"]
        lines += [f"- {r['method']} ({r['status']}): {r.get('reason', '')}" for r in skipped]
    lines.append("")
    if advice:
        lines.append(
            f"**Recommendation.** Best validation {metric}: **{advice['best_quality']}**. "
            f"Best {metric} per trainable parameter: **{advice['best_quality_per_trainable_parameter']}**. "
            f"Fastest to train within {advice['one_point']:g} of the best: "
            f"**{advice['fastest_within_one_point']}**."
        )
        lines += ["", "![pareto](pareto.png)", "", "![methods](methods.png)"]
    lines.append(
        "\nPeak RSS is each method's own process (Python, torch, model and training state). "
        "Saved size is the run's model/ directory (adapter + head for peft methods). "
        "Converged: no means the validation metric still rose by more than half a point (0.5 % on "
        "other scales) at the last evaluation, so more steps would likely help; - means fewer than "
        "two evaluations. With several seeds, metrics are mean ± standard deviation. Latency: the "
        "median CPU time of one forward of a single test row, as trained and with the adapter "
        "merged into the base (- where nothing is merged); epochs: how far each run got (time and "
        "early-stopping budgets end runs at different points)."
    )
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
