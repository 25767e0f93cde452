"""Hyperparameter sweeps: `lmtune sweep CONFIG --output-dir DIR`.

The run config's `sweep:` section names a search space of dotted config keys. Optuna samples
values (grid, random or TPE), each trial is an ordinary run directory `DIR/trial-NNN/` built
by applying the values as overrides, and the objective is the validation metric (the test
split never selects anything). Weak trials are pruned from their per-epoch validation metric.

The study lives in `DIR/study.db` (sqlite), so re-running the same command resumes: finished
trials count towards `n_trials`, and a trial left RUNNING by a killed process is marked failed
and re-queued with the same values in the same run directory, where training resumes from
its last checkpoint.
"""

from __future__ import annotations

import copy
import csv
import fcntl
import functools
import hashlib
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmtune.config import RunConfig, SweepConfig, SweepParam, load_yaml, normalise, set_dotted
from lmtune.errors import LmtuneError
from lmtune.evaluation.report import format_cell as _fmt
from lmtune.io import write_json, write_text

STUDY_NAME = "lmtune-sweep"
DEFAULT_TRIALS = 10


# ---- the search space ---------------------------------------------------------------------------
def _ordered(space: dict[str, SweepParam]) -> list[tuple[str, SweepParam]]:
    # The task type and method name decide which other keys exist, so they are drawn first.
    first = ("task.type", "method.name")
    return sorted(
        space.items(), key=lambda kv: (kv[0] not in first, first.index(kv[0]) if kv[0] in first else 0)
    )


def grid_values(param: SweepParam) -> list[Any]:
    """The finite values a grid takes for one parameter (categorical, or int/float with a step)."""
    if param.type == "categorical":
        return list(param.choices or [])
    assert param.low is not None and param.high is not None
    if param.type == "int":
        return list(range(int(param.low), int(param.high) + 1, int(param.step or 1)))
    if param.step is None:
        raise LmtuneError(
            "a grid sweep needs every float parameter to have a 'step'",
            hint="add step: to the float parameters, or use sampler: random or tpe",
        )
    count = math.floor((param.high - param.low) / param.step + 1e-9) + 1
    return [round(param.low + i * param.step, 12) for i in range(count)]


def grid_size(space: dict[str, SweepParam]) -> int:
    return math.prod(len(grid_values(p)) for p in space.values())


def _option_names(section: str, name: str) -> set[str]:
    from lmtune.methods import get_method_class
    from lmtune.tasks import get_task_class

    cls = get_method_class(name) if section == "method" else get_task_class(name)
    return set(cls.Options.model_fields)


def suggest(
    trial: Any, space: dict[str, SweepParam], base: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Draw one point; method/task options the drawn method/task does not have are skipped."""
    chosen = {
        "method": base["method"].get("name", "lora"),
        "task": base["task"].get("type", "classification"),
    }
    params: dict[str, Any] = {}
    skipped: list[str] = []
    for key, p in _ordered(space):
        parts = key.split(".")
        conditional = parts[0] in chosen and len(parts) == 2 and parts[1] not in ("name", "type")
        if conditional and parts[1] not in _option_names(parts[0], chosen[parts[0]]):
            skipped.append(key)  # e.g. method.r only for methods that have an `r`
            continue
        if p.type == "categorical":
            value = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            value = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            value = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
        params[key] = value
        if key in ("method.name", "task.type"):
            chosen[parts[0]] = value
    return params, skipped


def trial_config(base: dict[str, Any], params: dict[str, Any], run_dir: Path) -> RunConfig:
    raw = copy.deepcopy(base)
    for key, value in sorted(params.items(), key=lambda kv: kv[0] not in ("task.type", "method.name")):
        set_dotted(raw, key.split("."), value)
    raw["output_dir"] = str(run_dir)
    return RunConfig.from_dict(
        raw, source=f"{run_dir.name} ({', '.join(f'{k}={v}' for k, v in params.items())})"
    )


def objective_metric(cfg: RunConfig) -> tuple[str, bool]:
    """(metric, greater_is_better), decided as the Trainer decides them for the best checkpoint."""
    from lmtune.tasks import get_task_class

    return get_task_class(cfg.task.type).metric_direction(cfg.train.metric_for_best_model)


# ---- pruning ------------------------------------------------------------------------------------
def pruning_callback(trial: Any, metric: str) -> Any:
    import optuna
    from transformers import TrainerCallback

    class OptunaPruningCallback(TrainerCallback):
        """Reports each validation of the trial to Optuna and stops it when the pruner says so."""

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
        ) -> None:
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None:
                return
            step = round(state.epoch) if args.eval_strategy == "epoch" and state.epoch else state.global_step
            trial.report(float(value), int(step))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {args.eval_strategy} {step}: {metric}={value:.4f}")

    return OptunaPruningCallback()


# ---- the sweep ----------------------------------------------------------------------------------
@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One sweep process per directory, so a RUNNING trial found at start is a killed one."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".sweep.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise LmtuneError(
                f"another sweep is running in {out}", hint="wait for it, or choose another --output-dir"
            ) from None
        yield


def _sampler(sweep: SweepConfig) -> Any:
    import optuna

    if sweep.sampler == "grid":
        grid = {key: grid_values(p) for key, p in sweep.space.items()}
        return optuna.samplers.GridSampler(grid, seed=sweep.seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    # Few trials are the norm here: start modelling after 3 random ones, not Optuna's 10.
    return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=min(3, sweep.n_trials or 3))


def _pruner(sweep: SweepConfig) -> Any:
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if sweep.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _study_key(base: dict[str, Any], sweep: SweepConfig) -> str:
    # n_trials and timeout may change between invocations (to extend a sweep); nothing else.
    what = {"base": base, "space": sweep.model_dump(mode="json", include={"space", "sampler", "seed"})}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _recover_killed(study: Any) -> list[int]:
    """Mark trials a killed process left RUNNING as failed and queue their values again.

    A trial interrupted by Ctrl-C is already FAIL (with `interrupted` set); it is re-queued too.
    Finished trials cannot be changed, so the study remembers which ones were re-queued.
    """
    from optuna.trial import TrialState

    storage = study._storage
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        recovered.append(t.number)
    requeued = list(study.user_attrs.get("requeued", []))
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and t.number not in requeued:
            study.enqueue_trial(
                t.params, user_attrs={"rerun_of": t.number, "resume_dir": t.user_attrs.get("run_dir")}
            )
            requeued.append(t.number)
    study.set_user_attr("requeued", requeued)
    return recovered


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
    )


def load_sweep_config(
    config: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> dict[str, Any]:
    from lmtune.config import apply_overrides

    raw = load_yaml(config) if not isinstance(config, dict) else normalise(copy.deepcopy(config))
    return apply_overrides(raw, overrides or [])


@dataclass(frozen=True)
class SweepPlan:
    """What one sweep invocation decided from its config, before it touches the study."""

    base: dict[str, Any]  # the run config without its `sweep:` section
    sweep: SweepConfig
    out: Path
    metric: str
    direction: str
    total: int  # trials the study holds when the sweep is done (resumed ones count)
    key: str  # identifies the base config and the space: a changed sweep is refused

    @property
    def experiment(self) -> str:
        return f"sweep-{self.out.resolve().name}"


def plan_sweep(raw: dict[str, Any], output_dir: str | Path, source: str = "config") -> SweepPlan:
    """Validate `raw` (a run config with a `sweep:` section) and resolve what the sweep runs."""
    cfg = RunConfig.from_dict(raw, source=source)
    if cfg.sweep is None:
        raise LmtuneError(
            f"{source} has no `sweep:` section", hint="add sweep: {space: {...}}; see README 'Experiments'"
        )
    sweep_cfg = cfg.sweep
    for key, p in sweep_cfg.space.items():
        if p.type == "categorical" and any(
            not isinstance(c, str | int | float | bool | None) for c in p.choices or []
        ):
            raise LmtuneError(f"{source}: sweep.space.{key}: choices must be numbers, text or booleans")
    base = normalise(copy.deepcopy(raw))
    base.pop("sweep")
    base.setdefault("task", {"type": "classification"})
    base.setdefault("method", {"name": "lora"})
    out = Path(output_dir)
    metric, greater = objective_metric(RunConfig.from_dict({**base, "output_dir": str(out)}, source=source))
    direction = (
        sweep_cfg.direction if sweep_cfg.direction != "auto" else ("maximize" if greater else "minimize")
    )
    if sweep_cfg.sampler == "grid":
        size = grid_size(sweep_cfg.space)
        total = min(sweep_cfg.n_trials or size, size)
    else:
        total = sweep_cfg.n_trials or DEFAULT_TRIALS
    return SweepPlan(base, sweep_cfg, out, metric, direction, total, _study_key(base, sweep_cfg))


def open_study(plan: SweepPlan) -> Any:
    """Create the study in `out/study.db`, or load it, refusing one of another config or space."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{(plan.out / 'study.db').resolve()}")
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        sampler=_sampler(plan.sweep),
        pruner=_pruner(plan.sweep),
        direction=plan.direction,
        load_if_exists=True,
    )
    known = study.user_attrs.get("key")
    if known is None:
        study.set_user_attr("key", plan.key)
        study.set_user_attr("metric", plan.metric)
    elif known != plan.key:
        raise LmtuneError(
            f"{plan.out} holds a sweep with a different config or search space",
            hint="choose another --output-dir (only n_trials and timeout_s may change to extend a sweep)",
        )
    return study


def run_trial(plan: SweepPlan, trial: Any) -> float:
    """Optuna's objective: train one trial's run directory, return its validation metric."""
    from lmtune.run import train
    from lmtune.training.tracking import tracking_callbacks

    params, skipped = suggest(trial, plan.sweep.space, plan.base)
    run_dir = Path(trial.user_attrs.get("resume_dir") or plan.out / f"trial-{trial.number:03d}")
    trial.set_user_attr("run_dir", str(run_dir))
    if skipped:
        trial.set_user_attr("skipped", skipped)
    try:
        cfg = trial_config(plan.base, params, run_dir)
        # Every trial logs into the sweep's own store, handed to its trackers (threads share no env).
        trackers = tracking_callbacks(cfg.train.report_to, run_dir, plan.out, plan.experiment)
        run = train(cfg, callbacks=[pruning_callback(trial, plan.metric), *trackers])
    except LmtuneError as exc:
        trial.set_user_attr("error", str(exc))
        raise
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        raise
    validation = run.metrics.get("validation", {})
    if plan.metric not in validation:
        raise LmtuneError(
            f"{run_dir}: the validation metrics have no '{plan.metric}'",
            hint="set train.metric_for_best_model to one of: " + ", ".join(validation),
        )
    trial.set_user_attr("validation", {k: v for k, v in validation.items() if isinstance(v, int | float)})
    trial.set_user_attr("runtime_s", run.metrics.get("train", {}).get("runtime_s"))
    return float(validation[plan.metric])


def run_trials(study: Any, plan: SweepPlan, n_jobs: int = 1) -> None:
    """Run the trials the study still lacks (`n_jobs` at a time, in threads)."""
    remaining = max(0, plan.total - _finished(study))
    if remaining:
        study.optimize(
            functools.partial(run_trial, plan),
            n_trials=remaining,
            timeout=plan.sweep.timeout_s,
            n_jobs=n_jobs,
            catch=(LmtuneError,),
            gc_after_trial=True,
        )


def sweep(
    raw: dict[str, Any], output_dir: str | Path, n_jobs: int = 1, source: str = "config"
) -> dict[str, Any]:
    """Run (or resume) the sweep described by `raw` (a run config with a `sweep:` section)."""
    import optuna

    from lmtune.search.plots import param_importances, sweep_plots

    plan = plan_sweep(raw, output_dir, source)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _exclusive(plan.out):
        study = open_study(plan)
        recovered = _recover_killed(study)
        started = time.perf_counter()
        run_trials(study, plan, n_jobs)
        plots = sweep_plots(study, plan.out)
        outcome = collect_outcome(study, plan, recovered, time.perf_counter() - started)
        return write_artefacts(outcome, plan, plots, param_importances(study))


# ---- results -------------------------------------------------------------------------------------
def _trial_rows(study: Any) -> list[dict[str, Any]]:
    requeued = set(study.user_attrs.get("requeued", []))
    rows = []
    for t in study.get_trials(deepcopy=False):
        note = t.user_attrs.get("error", "")
        if t.user_attrs.get("interrupted"):
            note = "interrupted" + (" (re-queued)" if t.number in requeued else "")
        elif t.state.name == "PRUNED":
            note = f"pruned at evaluation step {t.last_step}"
        if "rerun_of" in t.user_attrs:
            note = (note + f"; re-run of trial {t.user_attrs['rerun_of']}").lstrip("; ")
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": dict(t.params),
                "duration_s": round(duration, 1) if duration is not None else None,
                "run_dir": t.user_attrs.get("run_dir"),
                "note": note.strip(),
            }
        )
    return rows


@dataclass(frozen=True)
class SweepOutcome:
    """What the study holds after this invocation, read once; the artefacts are written from it."""

    rows: list[dict[str, Any]]  # one per trial, as `_trial_rows` makes them
    best: dict[str, Any] | None  # the best completed trial with its test metrics, or None
    best_config: dict[str, Any] | None  # that trial's resolved config, retargeted to out/best
    recovered: list[int]  # trials a killed process had left RUNNING
    seconds: float

    @property
    def keys(self) -> list[str]:
        return sorted({k for r in self.rows for k in r["params"]})


def collect_outcome(study: Any, plan: SweepPlan, recovered: list[int], seconds: float) -> SweepOutcome:
    rows = _trial_rows(study)
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        return SweepOutcome(rows, None, None, recovered, seconds)
    bt = study.best_trial
    run_dir = Path(bt.user_attrs["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    best = {
        "trial": bt.number,
        "params": dict(bt.params),
        f"validation_{plan.metric}": bt.value,
        "run_dir": str(run_dir),
        # The test split is looked at once, for the trial the validation metric picked.
        "test": {k: v for k, v in metrics.get("test", {}).items() if isinstance(v, int | float)},
    }
    resolved = load_yaml(run_dir / "config.yaml")
    resolved["output_dir"] = str(plan.out / "best")
    return SweepOutcome(rows, best, resolved, recovered, seconds)


def summary_table(outcome: SweepOutcome, metric: str) -> list[list[Any]]:
    """summary.csv: a header and one row per trial."""
    keys = outcome.keys
    table: list[list[Any]] = [
        ["trial", "state", f"validation_{metric}", *keys, "duration_s", "run_dir", "note"]
    ]
    for r in outcome.rows:
        params = [r["params"].get(k) for k in keys]
        table.append([r["trial"], r["state"], r["value"], *params, r["duration_s"], r["run_dir"], r["note"]])
    return table


def summary_markdown(outcome: SweepOutcome, plan: SweepPlan, plots: dict[str, str]) -> str:
    """summary.md: every trial, the best one with its test metrics, the plots."""
    keys, metric = outcome.keys, plan.metric
    lines = [
        f"# Sweep: {len(outcome.rows)} trials, {plan.sweep.sampler} sampler, {plan.direction} "
        f"validation {metric}\n",
        f"| trial | state | validation {metric} | " + " | ".join(keys) + " | time (s) | note |",
        "|---:|---|---:|" + "---|" * len(keys) + "---:|---|",
    ]
    for r in outcome.rows:
        cells = [
            str(r["trial"]),
            r["state"],
            _fmt(r["value"]),
            *(_fmt(r["params"].get(k)) for k in keys),
        ]
        lines.append("| " + " | ".join([*cells, _fmt(r["duration_s"]), r["note"] or ""]) + " |")
    lines.append("")
    best = outcome.best
    if best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        test = ", ".join(f"{k} {_fmt(v)}" for k, v in best["test"].items() if k != "n") or "no test split"
        lines += [
            f"**Best:** trial {best['trial']} ({params}): "
            f"validation {metric} {_fmt(best[f'validation_{metric}'])}.",
            f"Test (evaluated for the best trial only): {test}.",
            "Its config: `best.yaml` (`lmtune train best.yaml` retrains it into best/).\n",
        ]
    else:
        lines.append("No trial completed.\n")
    for name, info in plots.items():
        lines.append(f"![{name}]({Path(info).name})" if info.endswith(".png") else f"{name}: {info}")
    return "\n".join(lines) + "\n"


def write_artefacts(
    outcome: SweepOutcome, plan: SweepPlan, plots: dict[str, str], importances: dict[str, float] | None = None
) -> dict[str, Any]:
    """summary.csv, summary.md, best.yaml and sweep.json; returns what sweep.json holds."""
    out = plan.out
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(summary_table(outcome, plan.metric))
    if outcome.best_config is not None:
        text = yaml.safe_dump(outcome.best_config, sort_keys=False, allow_unicode=True)
        write_text(out / "best.yaml", text)
    write_text(out / "summary.md", summary_markdown(outcome, plan, plots))
    summary = {
        "metric": plan.metric,
        "direction": plan.direction,
        "sampler": plan.sweep.sampler,
        "trials": outcome.rows,
        "best": outcome.best,
        "plots": plots,
        "importances": importances or {},
        "recovered_killed_trials": outcome.recovered,
        "seconds_this_invocation": round(outcome.seconds, 1),
    }
    write_json(out / "sweep.json", summary)
    return summary
