"""One run, top to bottom: config -> data -> model + method -> trainer -> evaluation -> artefacts.

`train()` produces a run directory; `Run.load()` reads one back for evaluation, prediction,
serving or export. The run directory is the unit users share:

    config.yaml      the resolved configuration (labels, columns, learning rate filled in)
    run.json         status (running/complete/failed/interrupted), the fingerprint of the config
    model/           adapter + head (peft) or full model, tokenizer, lmtune.json; safetensors
    metrics.json     validation/test metrics and training figures
    predictions/     validation.jsonl, test.jsonl: one record per example (gold, predicted, ...)
    report.md        tables and plots;  README.md  the model card
    train_log.jsonl  one record per logging step;  tensorboard/  event files
    checkpoint-N/    Trainer checkpoints while training (removed at the end unless kept)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmtune._version import __version__
from lmtune.chaining import lineage_of
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.io import atomic_dir, write_json, write_text
from lmtune.methods import get_method_class
from lmtune.methods.base import Method, MethodContext, count_parameters
from lmtune.models import MODEL_CONSTRUCTION_LOCK, resolve_model
from lmtune.tasks import get_task_class
from lmtune.tasks.base import EvalResult, PreparedData, Task, default_device

STATE_FILE = "run.json"


# ---- output directory ---------------------------------------------------------------------------
def fingerprint(cfg: RunConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else f"{prefix.rstrip('.')}: {a!r} -> {b!r}"


def read_state(out: Path) -> dict[str, Any] | None:
    path = out / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"status": "corrupt"}


def read_metrics(out: Path) -> dict[str, Any]:
    """metrics.json of a run ({} while it trains, or if the file is damaged)."""
    path = out / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def prepare_output_dir(cfg: RunConfig, overwrite: bool) -> str:
    """Decide what to do with OUTPUT_DIR: 'new', 'resume' or 'complete'. Never clobbers silently."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise LmtuneError(f"output dir {out} is a file", hint="choose another --output-dir")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    state = read_state(out)
    if state is None:
        raise LmtuneError(
            f"output dir {out} is not empty and is not an lmtune run",
            hint="choose an empty or new --output-dir (lmtune never deletes folders it did not create)",
        )
    if overwrite:
        shutil.rmtree(out)
        return "new"
    if state.get("fingerprint") != fingerprint(cfg):
        diff = _first_difference(state.get("config", {}), cfg.to_dict())
        raise LmtuneError(
            f"output dir {out} holds a different run" + (f" ({diff})" if diff else ""),
            hint="pass --overwrite to replace it, or choose another --output-dir",
        )
    return "complete" if state.get("status") == "complete" else "resume"


def write_state(out: Path, cfg: RunConfig, status: str, **extra: Any) -> None:
    """run.json: the run's status, config and fingerprint (what resuming and readers check)."""
    state = {
        "status": status,
        "fingerprint": fingerprint(cfg),
        "lmtune_version": __version__,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
    }
    parents = lineage_of(cfg.model.name)
    if parents:
        state["lineage"] = parents  # the runs this one started from (chaining.py)
    state.update(extra)
    write_json(out / STATE_FILE, state)


# What two runs must share to be combined (served side by side, merged, ensembled), as read from
# their resolved configs.
_SHARED_KEYS: dict[str, Any] = {
    "base model": lambda c: (c.model.name, c.model.revision),
    "task": lambda c: c.task.type,
    "labels": lambda c: c.data.labels,
    "multi_label": lambda c: getattr(c.task.options, "multi_label", None),
    "method": lambda c: c.method.name,
}


def first_mismatch(a: RunConfig, b: RunConfig, keys: Sequence[str]) -> tuple[str, Any, Any] | None:
    """The first of `keys` ("base model", "task", "labels", "multi_label", "method") on which two
    runs' configs differ, as (key, a's value, b's value); None when they agree on all of them."""
    for key in keys:
        ours, theirs = _SHARED_KEYS[key](a), _SHARED_KEYS[key](b)
        if ours != theirs:
            return key, ours, theirs
    return None


def read_finished_config(run_dir: Path) -> RunConfig:
    """The resolved config of a finished run, without loading any weights."""
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file():
        raise LmtuneError(f"{run_dir} is not an lmtune run (no config.yaml)", hint="give a run directory")
    state = read_state(run_dir) or {}
    if state.get("status") != "complete" or not (run_dir / "model").is_dir():
        raise LmtuneError(
            f"run {run_dir} did not finish (status: {state.get('status', 'unknown')})",
            hint="give a finished run",
        )
    return RunConfig.from_yaml(run_dir / "config.yaml")


def last_checkpoint(out: Path, cfg: RunConfig | None = None) -> str | None:
    """The newest checkpoint that was sealed after writing and still matches its checksums."""
    from lmtune.training.checkpoints import newest_usable

    path = newest_usable(out, fingerprint(cfg) if cfg is not None else None)
    return str(path) if path else None


# ---- training: the phases ---------------------------------------------------------------------
# `train` is a straight line of phases. Each takes the typed objects of earlier phases and returns
# its own; none reaches back. Only `claim_run_dir` and `write_artefacts` write the run directory.


@dataclass(frozen=True)
class RunPlan:
    """What is decided before any data is read: where the run goes and what to do there."""

    cfg: RunConfig  # as the user gave it: its fingerprint names the run
    out: Path
    status: str  # "new", "resume" or "complete"
    main: bool  # this process writes the run directory
    task_cls: type[Task]
    method_cls: type[Method]
    model_path: str
    adapter: str | None = None  # model.from_run continue: the adapter training goes on from


@dataclass(frozen=True)
class PreparedRun:
    """The resolved config (what config.yaml holds), the task bound to it, and the tokenized data."""

    resolved: RunConfig
    task: Task
    data: PreparedData
    tokenizer: Any
    train_set: Any  # a tokenized Dataset, or the length-grouped stream (data.streaming)
    eval_set: Any
    train_rows: int
    global_batch: int
    total_steps: int

    @property
    def eval_batch_size(self) -> int:
        t = self.resolved.train
        return t.eval_batch_size or t.batch_size * 2


@dataclass(frozen=True)
class BuiltModel:
    """The task model with the method applied, and what was measured before the method."""

    model: Any
    method: Method
    trainable: int
    total: int
    baseline: dict[str, Any] | None
    # Sharded strategies leave each process a shard: an empty copy to gather the weights into.
    skeleton: Any = None


@dataclass(frozen=True)
class FitResult:
    """What training produced: the trained model (full weights, on the main process) and figures."""

    model: Any
    runtime_s: float
    train_loss: float
    trainer_samples_per_second: float
    real_tokens: int
    padded_tokens: int
    global_step: int
    epoch: float
    best_metric: float | None
    resumed_from: str | None
    removed_checkpoints: list[str]
    skipped_nan_steps: int


def train(
    cfg: RunConfig, *, overwrite: bool = False, trainer_class: Any = None, callbacks: list[Any] | None = None
) -> Run | None:
    """Fine-tune according to `cfg`; returns the finished run (also on disk in cfg.output_dir).

    `trainer_class` replaces the Trainer (a subclass with its own loss, e.g. distillation).
    `callbacks` are extra Trainer callbacks (e.g. a sweep's pruning callback); they change
    neither the run's configuration nor its fingerprint.

    Started by `accelerate launch` in several processes, every process trains its share and
    only the main one writes the run directory and returns the run; the others return None.
    """
    plan = plan_run(cfg, overwrite)
    if plan.status == "complete":
        return Run.load(plan.out) if plan.main else None
    prepared = prepare(plan)
    built = build_model(plan, prepared)
    claim_run_dir(plan, prepared)
    with _state_on_exit(plan):
        fit = fit_model(plan, prepared, built, trainer_class, callbacks or [])
        if not plan.main:
            return None
        fitted = fit_after_training(prepared, fit.model)
        save_trained_model(plan.out, prepared, built.method, fit.model)
        results = evaluate_splits(prepared, fit.model)
        explained, explained_sections = explain_test_split(prepared, fit.model)
        metrics = collect_metrics(prepared, built, fit, results, {**fitted, **explained})
        write_artefacts(plan, prepared, built.method, metrics, results, explained_sections)
    return Run(plan.out, prepared.resolved, prepared.task, fit.model, prepared.tokenizer, metrics)


@contextlib.contextmanager
def _state_on_exit(plan: RunPlan) -> Iterator[None]:
    """run.json says `interrupted` (Ctrl-C, SIGINT) or `failed` (with the error's first line) when
    training stops early, so readers such as the board tell a dead run from a running one. Either
    stays resumable: the next `lmtune train` with the same config resumes it."""
    try:
        yield
    except KeyboardInterrupt:
        if plan.main:
            write_state(plan.out, plan.cfg, "interrupted")
        raise
    except Exception as exc:
        if plan.main:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            write_state(plan.out, plan.cfg, "failed", error=f"{type(exc).__name__}: {first_line}")
        raise


def plan_run(cfg: RunConfig, overwrite: bool) -> RunPlan:
    """Refuse what this config cannot do, join the process group, decide new/resume/complete."""
    from lmtune.training import distributed

    if cfg.sweep is not None:
        raise LmtuneError(
            "this config has a `sweep:` section, which `lmtune train` does not run",
            hint="run it with `lmtune sweep CONFIG --output-dir DIR`, or remove the sweep: section",
        )
    task_cls = get_task_class(cfg.task.type)
    method_cls = get_method_class(cfg.method.name)
    ev = cfg.evaluation
    if ev is not None and (ev.explain_errors or ev.faithfulness_samples):
        # Refused before training, not noted after it: the run would not give what was asked.
        for capability in ("token-attributions", "class-probabilities"):
            task_cls.require(capability, "evaluation.explain_errors / faithfulness_samples")
    distributed.check_supported(cfg)
    if distributed.is_distributed():
        distributed.process_state(cfg.train.distributed)
    status = distributed.on_main(prepare_output_dir, cfg, overwrite)
    model_ref = resolve_model(
        cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code, cfg.model.from_run
    )
    if model_ref.adapter is not None:
        _check_continued_method(cfg)
    return RunPlan(
        cfg=cfg,
        out=Path(cfg.output_dir),
        status=status,
        main=distributed.is_main_process(),
        task_cls=task_cls,
        method_cls=method_cls,
        model_path=model_ref.path,
        adapter=model_ref.adapter,
    )


def _check_continued_method(cfg: RunConfig) -> None:
    from lmtune.chaining import source_method

    source = source_method(Path(cfg.model.name))
    if source != cfg.method.name:
        raise LmtuneError(
            f"model.from_run is continue, but {cfg.model.name} trained method '{source}' and this run "
            f"uses '{cfg.method.name}'",
            hint=f"set method: {source} to continue its adapter, or model.from_run: merge",
        )


def prepare(plan: RunPlan) -> PreparedRun:
    """Read and check the data, resolve the config once, tokenize (through the cache)."""
    from transformers import set_seed

    from lmtune.training import distributed

    set_seed(plan.cfg.train.seed)
    task = plan.task_cls(plan.cfg)
    data = task.prepare_data()
    t = plan.cfg.train
    global_batch = t.batch_size * t.gradient_accumulation_steps * distributed.world_size()
    train_rows = (data.train_rows or 0) if data.train_stream is not None else None
    resolved = resolve_config(plan.cfg, task, plan.method_cls, global_batch, train_rows)
    task.bind(resolved)
    tokenizer = _load_tokenizer(plan.model_path, resolved)
    tokenized = _tokenize_splits(task, data, tokenizer, resolved.data.cache_tokenized)
    if data.train_stream is not None:
        import datasets

        datasets.disable_progress_bars()  # the stream tokenizes chunk by chunk: one bar each
        train_set = data.train_stream(tokenizer, resolved.train.batch_size, resolved.train.seed)
        data.report["truncated_train"] = None  # not known before the stream is read
    else:
        train_set = tokenized["train"]
        train_rows = len(train_set)
        data.report["truncated_train"] = _count_truncated(train_set, resolved.data.max_length)
    steps_per_epoch = math.ceil(train_rows * task.samples_per_row() / global_batch)
    total_steps = resolved.train.max_steps or math.ceil(steps_per_epoch * resolved.train.epochs)
    return PreparedRun(
        resolved=resolved,
        task=task,
        data=data,
        tokenizer=tokenizer,
        train_set=train_set,
        eval_set=tokenized["validation"],
        train_rows=train_rows,
        global_batch=global_batch,
        total_steps=total_steps,
    )


def resolve_config(
    cfg: RunConfig, task: Task, method_cls: type[Method], global_batch: int, stream_rows: int | None
) -> RunConfig:
    """Fill in what the data and the method decide, so config.yaml reproduces the run exactly.

    A stream (`stream_rows` set) has no length the Trainer could count epochs by, so its step
    count is written in too.
    """
    raw = cfg.to_dict()
    raw["data"].update(task.resolved_data())
    raw["task"].update(task.resolved_options())
    raw["train"]["learning_rate"] = cfg.train.learning_rate or method_cls.default_learning_rate
    raw["train"]["metric_for_best_model"] = cfg.train.metric_for_best_model or task.default_metric
    if stream_rows is not None and cfg.train.max_steps is None:
        raw["train"]["max_steps"] = math.ceil(math.ceil(stream_rows / global_batch) * cfg.train.epochs)
    return RunConfig.from_dict(raw)


def _tokenize_splits(task: Task, data: PreparedData, tokenizer: Any, use_cache: bool) -> dict[str, Any]:
    if not use_cache:
        return {name: task.tokenize(ds, tokenizer) for name, ds in data.splits.items()}
    from lmtune.data.cache import cached_tokenize, tokenizer_digest
    from lmtune.training import distributed

    tokenizer_id = tokenizer_digest(tokenizer)
    tokenized, hits = {}, []
    # The main process fills the cache; the others then read it instead of racing to write it.
    with distributed.main_process_first():
        for name, ds in data.splits.items():
            tokenized[name], hit = cached_tokenize(task, ds, tokenizer, tokenizer_id)
            if hit:
                hits.append(name)
    data.report["tokenization_cache_hits"] = hits
    return tokenized


def _count_truncated(train_set: Any, max_length: int) -> int:
    # A task whose rows can fill max_length without truncation (packing) says which were truncated.
    if "truncated" in train_set.column_names:
        return sum(train_set["truncated"])
    return sum(1 for n in train_set["length"] if n >= max_length)


def build_model(plan: RunPlan, prepared: PreparedRun) -> BuiltModel:
    """The task's model on the pretrained body, its untuned baseline, then the method applied."""
    from transformers import set_seed

    resolved, task = prepared.resolved, prepared.task
    set_seed(resolved.train.seed)
    with MODEL_CONSTRUCTION_LOCK:
        model = task.build_model(plan.model_path, fresh_head=True)
    if plan.adapter is None:
        from lmtune.training.head_init import scale_fresh_heads

        # A new head on a decoder's large-scale features starts with saturated logits otherwise.
        scale_fresh_heads(model, task.peft_head_names, plan.model_path, _training_batches(prepared))

    def measure_baseline() -> dict[str, Any] | None:
        splits, batch = prepared.data.splits, prepared.eval_batch_size
        return task.baseline(model, prepared.tokenizer, splits, batch) if plan.main else None

    # The starting point: the pretrained model, or with a continued adapter that adapter on it.
    baseline = measure_baseline() if plan.adapter is None else None
    method = plan.method_cls(resolved.method.options)
    ctx = MethodContext(
        task=task,
        total_steps=prepared.total_steps,
        init_adapter=plan.adapter,
        training_batches=_training_batches(prepared),
    )
    with MODEL_CONSTRUCTION_LOCK:
        model = method.apply(model, ctx)
    if plan.adapter is not None:
        baseline = measure_baseline()
    if resolved.train.fast_dropout and default_device().type == "cpu":
        from lmtune.training import fast_dropout

        fast_dropout.install(model)
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise LmtuneError(f"method '{method.name}' left no trainable parameters", hint="check its options")
    return BuiltModel(
        model, method, trainable, total, baseline, skeleton=_skeleton_if_sharded(resolved, model)
    )


def _training_batches(prepared: PreparedRun) -> Any:
    """`MethodContext.training_batches`: the first training rows, collated as the model's forward
    takes them (`Task.forward_batches`); None when the train split streams from its file."""
    train = prepared.data.splits.get("train")
    if train is None or prepared.data.train_stream is not None:
        return None
    size = prepared.resolved.train.batch_size

    def batches(count: int) -> list[dict[str, Any]]:
        rows = train.select(range(min(len(train), count * size)))
        return prepared.task.forward_batches(prepared.tokenizer, rows, size, count)

    return batches


def _skeleton_if_sharded(cfg: RunConfig, model: Any) -> Any:
    """An empty (meta-device) copy of the adapted model, for strategies that shard it.

    FSDP and DeepSpeed leave each process a shard; the gathered weights are loaded into this
    copy, so the method is applied once and the saved model has the trained structure.
    """
    from lmtune.training import distributed

    dist = cfg.train.distributed
    if not distributed.is_distributed() or dist is None or dist.strategy == "ddp":
        return None
    return EmptyCopy.of(model)


@dataclass(frozen=True)
class EmptyCopy:
    """A model's structure without its weights, plus what `to_empty` loses: its buffers (small
    tensors such as position ids, left out of state dicts when not persistent) and which
    parameters are one tensor (tied embeddings)."""

    module: Any
    buffers: dict[str, Any]
    tied: list[list[str]]

    @classmethod
    def of(cls, model: Any) -> EmptyCopy:
        import copy

        buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
        by_tensor: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            by_tensor.setdefault(id(param), []).append(name)
        tied = [names for names in by_tensor.values() if len(names) > 1]
        return cls(copy.deepcopy(model).to_empty(device="meta"), buffers, tied)

    def filled(self, state_dict: dict[str, Any]) -> Any:
        model = self.module.to_empty(device="cpu")
        for name, buffer in self.buffers.items():
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner).register_buffer(attr, buffer, persistent=name in state_dict)
        for first, *others in self.tied:
            shared = model.get_parameter(first)
            for name in others:
                owner, _, attr = name.rpartition(".")
                setattr(model.get_submodule(owner), attr, shared)
        model.load_state_dict(state_dict)
        return model


def claim_run_dir(plan: RunPlan, prepared: PreparedRun) -> None:
    """Mark the run directory as this run's, once data, model and method are known to work.

    A setup error before this point leaves nothing behind that a corrected command would
    collide with.
    """
    if not plan.main:
        return
    plan.out.mkdir(parents=True, exist_ok=True)
    # The process that trains, so a reader can tell a killed run (no such process) from a live one.
    write_state(plan.out, plan.cfg, "running", pid=os.getpid(), host=socket.gethostname())
    write_text(plan.out / "config.yaml", prepared.resolved.to_yaml())


def fit_model(
    plan: RunPlan, prepared: PreparedRun, built: BuiltModel, trainer_class: Any, callbacks: list[Any]
) -> FitResult:
    """Train (resuming from the newest intact checkpoint), then gather the full weights."""
    from lmtune.training import distributed
    from lmtune.training.callbacks import JsonlLogCallback, NanGuardCallback, TimeBudgetCallback
    from lmtune.training.checkpoints import CheckpointSealCallback, remove_unusable
    from lmtune.training.trainer import build_trainer

    out, t = plan.out, prepared.resolved.train
    nan_guard = NanGuardCallback(t.on_nan)
    budget = [TimeBudgetCallback(t.max_time_s, t.eval_strategy != "no")] if t.max_time_s else []
    trainer = build_trainer(
        prepared.resolved,
        out,
        built.model,
        prepared.tokenizer,
        prepared.task,
        prepared.train_set,
        prepared.eval_set,
        [
            JsonlLogCallback(out / "train_log.jsonl"),
            nan_guard,
            CheckpointSealCallback(t.save_total_limit, fingerprint(plan.cfg)),
            *budget,
            *built.method.callbacks(),
            *callbacks,
        ],
        trainer_class=trainer_class,
        method=built.method,
    )

    # A kill can leave a half-written checkpoint; only sealed, intact ones are resumed from.
    def find_resume_point() -> tuple[list[str], str | None]:
        if plan.status != "resume":
            return [], None
        return remove_unusable(out, fingerprint(plan.cfg)), last_checkpoint(out, plan.cfg)

    removed, resume_from = distributed.on_main(find_resume_point)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - started
    real, padded = distributed.sum_over_processes([trainer.real_tokens, trainer.padded_tokens])
    _raise_if_nan(nan_guard, out, plan.cfg)
    return FitResult(
        model=_full_model(trainer, built),
        runtime_s=runtime,
        train_loss=result.training_loss,
        trainer_samples_per_second=result.metrics.get("train_samples_per_second", 0.0),
        real_tokens=real,
        padded_tokens=padded,
        global_step=trainer.state.global_step,
        epoch=trainer.state.epoch or 0.0,
        best_metric=trainer.state.best_metric,
        resumed_from=resume_from,
        removed_checkpoints=removed,
        skipped_nan_steps=nan_guard.skipped_steps,
    )


def _raise_if_nan(nan_guard: Any, out: Path, cfg: RunConfig) -> None:
    if nan_guard.bad_step is None:
        return
    good = last_checkpoint(out, cfg)
    kept = f"; last good checkpoint: {good}" if good else "; no checkpoint was saved before it"
    raise LmtuneError(
        f"training stopped: the loss became NaN/inf at step {nan_guard.bad_step}{kept}",
        hint="lower train.learning_rate, keep train.max_grad_norm set, use precision fp32, "
        "or set train.on_nan=skip",
    )


def _full_model(trainer: Any, built: BuiltModel) -> Any:
    """The trained model with its full weights (a collective under FSDP/DeepSpeed: every process)."""
    from lmtune.training import distributed

    full_state = distributed.consolidated_state_dict(trainer)
    if full_state is None:
        return trainer.model
    return built.skeleton.filled(full_state)


def fit_after_training(prepared: PreparedRun, model: Any) -> dict[str, Any]:
    """What the task fits on the trained model and the validation split (e.g. a temperature), before
    saving and evaluating, so both use it; returns the task's entries for metrics.json."""
    validation = prepared.data.splits.get("validation")
    return prepared.task.fit_after_training(model, prepared.tokenizer, validation, prepared.eval_batch_size)


def explain_test_split(prepared: PreparedRun, model: Any) -> tuple[dict[str, Any], list[str]]:
    """evaluation.explain_errors / faithfulness_samples on the test split: metrics.json's
    `explanations` and report.md's explained errors (({}, []) when neither is set)."""
    from lmtune.evaluation.explain_report import explain_after_training

    return explain_after_training(prepared, model)


def save_trained_model(out: Path, prepared: PreparedRun, method: Method, model: Any) -> None:
    """model/: the method's own format (adapter + head, or the whole model), tokenizer, lmtune.json."""
    resolved = prepared.resolved
    info = model_info(resolved, prepared.task.labels)
    state = prepared.task.fitted_state()
    if state:  # only tasks that fitted something write the key: other runs' lmtune.json is unchanged
        info["task_state"] = state
    with atomic_dir(out / "model") as tmp:
        method.save(model, tmp)
        prepared.tokenizer.save_pretrained(tmp)
        write_json(tmp / "lmtune.json", info)


def model_info(resolved: RunConfig, labels: list[str] | None) -> dict[str, Any]:
    """model/lmtune.json: what the saved model is, for readers without the run's config."""
    return {
        "task": resolved.task.type,
        "method": resolved.method.name,
        "base_model": resolved.model.name,
        "labels": labels,
        "lmtune_version": __version__,
    }


def evaluate_splits(prepared: PreparedRun, model: Any) -> dict[str, EvalResult]:
    """The task's own metrics on the validation and test splits (the loop `lmtune eval` uses)."""
    splits = prepared.data.splits
    return {
        split: prepared.task.evaluate(model, prepared.tokenizer, splits[split], prepared.eval_batch_size)
        for split in ("validation", "test")
        if split in splits
    }


def collect_metrics(
    prepared: PreparedRun,
    built: BuiltModel,
    fit: FitResult,
    results: dict[str, EvalResult],
    fitted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics.json: a pure function of what the phases produced (`fitted`: `fit_after_training`'s)."""
    metrics: dict[str, Any] = {split: r.metrics for split, r in results.items()}
    metrics["train"] = _training_figures(prepared, built, fit)
    metrics.update(fitted or {})
    if built.baseline is not None:
        metrics["baseline"] = built.baseline
    metrics["details"] = {split: r.details for split, r in results.items()}
    metrics["data"] = prepared.data.report
    return metrics


def _training_figures(prepared: PreparedRun, built: BuiltModel, fit: FitResult) -> dict[str, Any]:
    from lmtune.training import distributed

    t, rows, runtime = prepared.resolved.train, prepared.train_rows, fit.runtime_s
    if prepared.data.train_stream is not None:
        samples = min(fit.global_step * prepared.global_batch, rows * t.epochs)
    else:
        samples = rows * fit.epoch
    # Packing puts several examples in one training row: count examples too.
    examples = prepared.data.report.get("rows", {}).get("train", rows) * samples / max(rows, 1)

    def per_second(amount: float, digits: int) -> float:
        return round(amount / runtime, digits) if runtime > 0 else 0.0

    return {
        "runtime_s": round(runtime, 3),
        "samples_per_second": per_second(samples, 3)
        if fit.resumed_from is None
        else round(fit.trainer_samples_per_second, 3),
        "examples_per_second": per_second(examples, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "tokens_per_second": per_second(fit.real_tokens, 1),
        "padded_tokens_per_second": per_second(fit.padded_tokens, 1),
        "padding_ratio": round(1 - fit.real_tokens / max(fit.padded_tokens, 1), 4),
        "processes": distributed.world_size(),
        "trainable_params": built.trainable,
        "total_params": built.total,
        "trainable_percent": round(100 * built.trainable / built.total, 4) if built.total else 0.0,
        "steps": fit.global_step,
        "epochs_completed": round(fit.epoch, 3),
        "final_train_loss": round(fit.train_loss, 6),
        "best_checkpoint_metric": fit.best_metric,
        "resumed_from": Path(fit.resumed_from).name if fit.resumed_from else None,
        "removed_incomplete_checkpoints": fit.removed_checkpoints,
        "skipped_nan_steps": fit.skipped_nan_steps,
    }


def write_artefacts(
    plan: RunPlan,
    prepared: PreparedRun,
    method: Method,
    metrics: dict[str, Any],
    results: dict[str, EvalResult],
    extra_sections: list[str] | None = None,
) -> None:
    """metrics.json, predictions/SPLIT.jsonl (each split's per-example records), report.md, the
    model card; then mark the run complete and drop checkpoints. `extra_sections` (explained
    errors) follow the task's and the audit's report sections."""
    from lmtune.evaluation.predictions import write_predictions
    from lmtune.evaluation.report import write_model_card, write_report

    out, resolved = plan.out, prepared.resolved
    write_json(out / "metrics.json", metrics)
    for split, result in results.items():
        write_predictions(out, split, result.records)
    sections = prepared.task.report_sections(results, out)
    if prepared.data.audit is not None:
        from lmtune.data.audit_report import audit_sections, write_findings_csv

        write_findings_csv(prepared.data.audit.findings, out / "audit.csv")
        audit = prepared.data.audit
        sections += ["## Data audit\n", "Every finding: audit.csv.\n"]
        sections += audit_sections(audit.summary, audit.findings, out, audit.given_label_probability)
    sections += extra_sections or []
    write_report(out, resolved, metrics, prepared.data.report, sections)
    write_model_card(out, resolved, metrics, method_saves_adapter=method.supports("peft-adapter"))
    # Complete first, then drop checkpoints: a kill in between leaves spare checkpoints, not a
    # finished run that would be trained again from scratch.
    write_state(out, plan.cfg, "complete", finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if not resolved.train.keep_checkpoints:
        for path in out.glob("checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _load_tokenizer(path: str, cfg: RunConfig) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models ship without a pad token
    return tokenizer


# ---- a finished run -----------------------------------------------------------------------------
class Run:
    """A finished run directory, loaded for prediction and evaluation."""

    def __init__(
        self,
        directory: Path,
        config: RunConfig,
        task: Any,
        model: Any,
        tokenizer: Any,
        metrics: dict[str, Any],
    ) -> None:
        self.directory = Path(directory)
        self.config = config
        self.task = task
        self.model = model
        self.tokenizer = tokenizer
        self.metrics = metrics

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> Run:
        directory = Path(directory)
        if not (directory / "config.yaml").exists():
            raise LmtuneError(
                f"{directory} is not an lmtune run (no config.yaml)", hint="give a run directory"
            )
        state = read_state(directory) or {}
        if state.get("status") != "complete" or not (directory / "model").is_dir():
            raise LmtuneError(
                f"run {directory} did not finish (status: {state.get('status', 'unknown')})",
                hint="re-run the same `lmtune train` command to resume it",
            )
        cfg = RunConfig.from_yaml(directory / "config.yaml")
        task = get_task_class(cfg.task.type)(cfg)
        method = get_method_class(cfg.method.name)(cfg.method.options)
        model_dir = directory / "model"

        def build(path: str | None) -> Any:
            if path is None:
                m = cfg.model
                ref = resolve_model(m.name, m.revision, m.trust_remote_code, m.from_run)
                return task.build_model(ref.path, fresh_head=False)
            return task.build_model(path, fresh_head=False)

        with MODEL_CONSTRUCTION_LOCK:
            model = method.load(model_dir, build)
        task.restore_state(saved_task_state(model_dir))
        model.to(device or default_device())
        model.eval()
        tokenizer = _load_tokenizer(str(model_dir), cfg)
        return cls(directory, cfg, task, model, tokenizer, read_metrics(directory))

    @property
    def batch_size(self) -> int:
        return self.config.train.eval_batch_size or self.config.train.batch_size * 2

    def predict(
        self,
        texts: str | list[str] | list[dict[str, Any]],
        batch_size: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> list[dict]:
        """Predictions for texts (or input records such as {"text", "text_pair"}).

        `options` are the task's prediction options, e.g. generation settings for generative tasks.
        """
        inputs, opts = self._checked_inputs(texts, options)
        return self.task.predict(self.model, self.tokenizer, inputs, batch_size or self.batch_size, opts)

    def _checked_inputs(
        self, texts: str | list[str] | list[dict[str, Any]], options: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], Any]:
        """Input records (a bare text becomes {"text": ...}), each checked, and the task's options."""
        if isinstance(texts, str):
            texts = [texts]
        inputs = [t if isinstance(t, dict) else {"text": t} for t in texts]
        for i, item in enumerate(inputs):
            self.task.check_input(i, item)
        return inputs, self.task.predict_options(options)

    def predict_file(
        self, path: str | Path, batch_size: int | None = None, options: dict[str, Any] | None = None
    ) -> list[dict]:
        inputs = self.task.read_inputs(str(path))
        opts = self.task.predict_options(options)
        return self.task.predict(self.model, self.tokenizer, inputs, batch_size or self.batch_size, opts)

    def evaluate(self, path: str | Path, batch_size: int | None = None) -> dict[str, Any]:
        """The task's metrics on a labelled file, with its `details` (per-class tables, ...)."""
        result = self.evaluate_result(path, batch_size)
        return {**result.metrics, "details": result.details}

    def evaluate_result(self, path: str | Path, batch_size: int | None = None) -> EvalResult:
        """`evaluate` as the task gives it: metrics, details and the per-example `records`
        (what `lmtune eval --save-predictions` writes)."""
        dataset = self.task.read_labelled(str(path))
        return self.task.evaluate(self.model, self.tokenizer, dataset, batch_size or self.batch_size)

    def explain(
        self,
        texts: str | list[str] | list[dict[str, Any]],
        settings: Any = None,
        options: dict[str, Any] | None = None,
    ) -> list[dict]:
        """Token attributions per input (`lmtune.evaluation.explain`): its prediction, tokens,
        words and each target's scores; `settings` is an `ExplainSettings` (method, steps, target)."""
        from lmtune.evaluation.explain import explain, require_explainable

        require_explainable(self.task)
        inputs, opts = self._checked_inputs(texts, options)
        return explain(self.task, self.model, self.tokenizer, inputs, settings, opts)


def load_run(directory: str | Path, device: str | None = None) -> Run:
    return Run.load(directory, device)


def saved_task_state(model_dir: Path) -> dict[str, Any]:
    """model/lmtune.json's `task_state` (what `Task.fitted_state` gave at training), {} if none."""
    path = Path(model_dir) / "lmtune.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LmtuneError(f"{path} is not valid JSON", hint="the run's model/ folder is damaged") from None
    state = info.get("task_state") if isinstance(info, dict) else None
    return state if isinstance(state, dict) else {}
