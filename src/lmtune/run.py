"""One run, top to bottom: config -> data -> model + method -> trainer -> evaluation -> artefacts.

`train()` produces a run directory; `Run.load()` reads one back for evaluation, prediction,
serving or export. The run directory is the unit users share:

    config.yaml      the resolved configuration (labels, columns, learning rate filled in)
    run.json         status (running/complete) and the fingerprint of the config that made it
    model/           adapter + head (peft) or full model, tokenizer, lmtune.json; safetensors
    metrics.json     validation/test metrics and training figures
    report.md        tables and plots;  README.md  the model card
    train_log.jsonl  one record per logging step;  tensorboard/  event files
    checkpoint-N/    Trainer checkpoints while training (removed at the end unless kept)
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmtune._version import __version__
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.io import atomic_dir, write_json, write_text
from lmtune.methods import get_method_class
from lmtune.methods.base import MethodContext, count_parameters
from lmtune.models import resolve_model
from lmtune.tasks import get_task_class
from lmtune.tasks.base import default_device

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


def _write_state(out: Path, cfg: RunConfig, status: str, **extra: Any) -> None:
    state = {
        "status": status,
        "fingerprint": fingerprint(cfg),
        "lmtune_version": __version__,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
    }
    state.update(extra)
    write_json(out / STATE_FILE, state)


def last_checkpoint(out: Path, cfg: RunConfig | None = None) -> str | None:
    """The newest checkpoint that was sealed after writing and still matches its checksums."""
    from lmtune.training.checkpoints import newest_usable

    path = newest_usable(out, fingerprint(cfg) if cfg is not None else None)
    return str(path) if path else None


# ---- training -----------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _load_tokenizer(path: str, cfg: RunConfig) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models ship without a pad token
    return tokenizer


def _resolve(cfg: RunConfig, task: Any, method_cls: Any) -> RunConfig:
    """Fill in what the data and the method decide, so config.yaml reproduces the run exactly."""
    raw = cfg.to_dict()
    raw["data"]["labels"] = task.labels
    for key, attr in (
        ("text_column", "text_column"),
        ("text_pair_column", "pair_column"),
        ("label_column", "label_column"),
    ):
        if hasattr(task, attr):
            raw["data"][key] = getattr(task, attr)
    raw["task"].update(task.resolved_options())
    raw["train"]["learning_rate"] = cfg.train.learning_rate or method_cls.default_learning_rate
    raw["train"]["metric_for_best_model"] = cfg.train.metric_for_best_model or task.default_metric
    return RunConfig.from_dict(raw)


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
    from transformers import set_seed

    from lmtune.training import distributed

    if cfg.sweep is not None:
        raise LmtuneError(
            "this config has a `sweep:` section, which `lmtune train` does not run",
            hint="run it with `lmtune sweep CONFIG --output-dir DIR`, or remove the sweep: section",
        )
    distributed.check_supported(cfg)
    if distributed.is_distributed():
        distributed.process_state(cfg.train.distributed)
    main = distributed.is_main_process()
    status = distributed.on_main(prepare_output_dir, cfg, overwrite)
    out = Path(cfg.output_dir)
    if status == "complete":
        return Run.load(out) if main else None
    set_seed(cfg.train.seed)
    task_cls = get_task_class(cfg.task.type)
    method_cls = get_method_class(cfg.method.name)
    model_ref = resolve_model(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    if cfg.data.streaming and not task_cls.supports_streaming:
        raise LmtuneError(
            f"task '{cfg.task.type}' cannot stream its training data (data.streaming)",
            hint="streaming is available for classification; set data.streaming to false",
        )
    task = task_cls(cfg)
    data = task.prepare_data()
    resolved = _resolve(cfg, task, method_cls)

    task = task_cls(resolved)
    tokenizer = _load_tokenizer(model_ref.path, resolved)
    tokenized = {}
    if resolved.data.cache_tokenized:
        from lmtune.data.cache import cached_tokenize, tokenizer_digest

        tokenizer_id = tokenizer_digest(tokenizer)
        hits = []
        # The main process fills the cache; the others then read it instead of racing to write it.
        with distributed.main_process_first():
            for name, ds in data.splits.items():
                tokenized[name], hit = cached_tokenize(task, ds, tokenizer, tokenizer_id)
                if hit:
                    hits.append(name)
        data.report["tokenization_cache_hits"] = hits
    else:
        tokenized = {name: task.tokenize(ds, tokenizer) for name, ds in data.splits.items()}
    t = resolved.train
    global_batch = t.batch_size * t.gradient_accumulation_steps * distributed.world_size()
    if data.train_stream is not None:
        import datasets

        datasets.disable_progress_bars()  # the stream tokenizes chunk by chunk: one bar each
        train_set = data.train_stream(tokenizer, t.batch_size, t.seed)
        train_rows = data.train_rows or 0
        data.report["truncated_train"] = None  # not known before the stream is read
    else:
        train_set = tokenized["train"]
        train_rows = len(train_set)
        # A task whose rows can fill max_length without truncation (packing) says which were truncated.
        data.report["truncated_train"] = (
            sum(train_set["truncated"])
            if "truncated" in train_set.column_names
            else sum(1 for n in train_set["length"] if n >= resolved.data.max_length)
        )

    set_seed(resolved.train.seed)
    model = task.build_model(model_ref.path, fresh_head=True)
    steps_per_epoch = math.ceil(train_rows / global_batch)
    total_steps = t.max_steps or math.ceil(steps_per_epoch * t.epochs)
    if data.train_stream is not None and t.max_steps is None:
        # A stream has no length the Trainer could count epochs by: give it the step count.
        raw = resolved.to_dict()
        raw["train"]["max_steps"] = total_steps
        resolved = RunConfig.from_dict(raw)
        t = resolved.train
    batch = t.eval_batch_size or t.batch_size * 2
    baseline = task.baseline(model, tokenizer, data.splits, batch) if main else None
    method = method_cls(resolved.method.options)
    model = method.apply(model, MethodContext(task=task, total_steps=total_steps))
    if t.fast_dropout and default_device().type == "cpu":
        from lmtune.training import fast_dropout

        fast_dropout.install(model)
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise LmtuneError(f"method '{method.name}' left no trainable parameters", hint="check its options")
    # The run directory is claimed only once data, model and method are known to work, so a
    # setup error leaves nothing behind that a corrected command would collide with.
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _write_state(out, cfg, "running")
        write_text(out / "config.yaml", resolved.to_yaml())

    from lmtune.training.callbacks import JsonlLogCallback, NanGuardCallback
    from lmtune.training.checkpoints import CheckpointSealCallback, remove_unusable
    from lmtune.training.trainer import build_trainer

    nan_guard = NanGuardCallback(t.on_nan)
    sealer = CheckpointSealCallback(t.save_total_limit, fingerprint(cfg))
    trainer = build_trainer(
        resolved,
        out,
        model,
        tokenizer,
        task,
        train_set,
        tokenized["validation"],
        [
            JsonlLogCallback(out / "train_log.jsonl"),
            nan_guard,
            sealer,
            *method.callbacks(),
            *(callbacks or []),
        ],
        trainer_class=trainer_class,
    )

    # A kill can leave a half-written checkpoint; only sealed, intact ones are resumed from.
    def find_resume_point() -> tuple[list[str], str | None]:
        if status != "resume":
            return [], None
        return remove_unusable(out, fingerprint(cfg)), last_checkpoint(out, cfg)

    removed, resume_from = distributed.on_main(find_resume_point)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - started
    real_tokens, padded_tokens = distributed.sum_over_processes([trainer.real_tokens, trainer.padded_tokens])
    if nan_guard.bad_step is not None:
        good = last_checkpoint(out, cfg)
        kept = f"; last good checkpoint: {good}" if good else "; no checkpoint was saved before it"
        raise LmtuneError(
            f"training stopped: the loss became NaN/inf at step {nan_guard.bad_step}{kept}",
            hint="lower train.learning_rate, keep train.max_grad_norm set, use precision fp32, "
            "or set train.on_nan=skip",
        )
    model = trainer.model
    # FSDP / DeepSpeed leave each process a shard: gather the full weights into a fresh copy.
    full_state = distributed.consolidated_state_dict(trainer)
    if not main:
        return None
    if full_state is not None:
        fresh = task.build_model(model_ref.path, fresh_head=True)
        model = method.apply(fresh, MethodContext(task=task, total_steps=total_steps))
        model.load_state_dict(full_state)

    with atomic_dir(out / "model") as tmp:
        method.save(model, tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / "lmtune.json",
            {
                "task": resolved.task.type,
                "method": resolved.method.name,
                "base_model": resolved.model.name,
                "labels": task.labels,
                "lmtune_version": __version__,
            },
        )

    results = {
        split: task.evaluate(model, tokenizer, data.splits[split], batch)
        for split in ("validation", "test")
        if split in data.splits
    }
    if data.train_stream is not None:
        samples = min(trainer.state.global_step * global_batch, train_rows * t.epochs)
    else:
        samples = train_rows * trainer.state.epoch if trainer.state.epoch else 0
    metrics: dict[str, Any] = {split: r.metrics for split, r in results.items()}
    metrics["train"] = {
        "runtime_s": round(runtime, 3),
        "samples_per_second": round(samples / runtime, 3)
        if runtime > 0 and resume_from is None
        else round(result.metrics.get("train_samples_per_second", 0.0), 3),
        # Packing puts several examples in one training row: count examples too.
        "examples_per_second": round(
            data.report.get("rows", {}).get("train", train_rows) * samples / max(train_rows, 1) / runtime, 3
        )
        if runtime > 0
        else 0.0,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "tokens_per_second": round(real_tokens / runtime, 1) if runtime > 0 else 0.0,
        "padded_tokens_per_second": round(padded_tokens / runtime, 1) if runtime > 0 else 0.0,
        "padding_ratio": round(1 - real_tokens / max(padded_tokens, 1), 4),
        "processes": distributed.world_size(),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4) if total else 0.0,
        "steps": trainer.state.global_step,
        "epochs_completed": round(trainer.state.epoch or 0.0, 3),
        "final_train_loss": round(result.training_loss, 6),
        "best_checkpoint_metric": trainer.state.best_metric,
        "resumed_from": Path(resume_from).name if resume_from else None,
        "removed_incomplete_checkpoints": removed,
        "skipped_nan_steps": nan_guard.skipped_steps,
    }
    if baseline is not None:
        metrics["baseline"] = baseline
    metrics["details"] = {split: r.details for split, r in results.items()}
    metrics["data"] = data.report
    write_json(out / "metrics.json", metrics)

    from lmtune.evaluation.report import write_model_card, write_report

    write_report(out, resolved, metrics, data.report, task.report_sections(results, out))
    write_model_card(out, resolved, metrics, method_saves_adapter=_is_peft(model))
    # Complete first, then drop checkpoints: a kill in between leaves spare checkpoints, not a
    # finished run that would be trained again from scratch.
    _write_state(out, cfg, "complete", finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if not t.keep_checkpoints:
        for path in out.glob("checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)
    return Run(out, resolved, task, model, tokenizer, metrics)


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


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
                ref = resolve_model(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
                return task.build_model(ref.path, fresh_head=False)
            return task.build_model(path, fresh_head=False)

        model = method.load(model_dir, build)
        model.to(device or default_device())
        model.eval()
        tokenizer = _load_tokenizer(str(model_dir), cfg)
        metrics_path = directory / "metrics.json"
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
        return cls(directory, cfg, task, model, tokenizer, metrics)

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
        if isinstance(texts, str):
            texts = [texts]
        inputs = [t if isinstance(t, dict) else {"text": t} for t in texts]
        for i, item in enumerate(inputs):
            self.task.check_input(i, item)
        opts = self.task.predict_options(options)
        return self.task.predict(self.model, self.tokenizer, inputs, batch_size or self.batch_size, opts)

    def predict_file(
        self, path: str | Path, batch_size: int | None = None, options: dict[str, Any] | None = None
    ) -> list[dict]:
        inputs = self.task.read_inputs(str(path))
        opts = self.task.predict_options(options)
        return self.task.predict(self.model, self.tokenizer, inputs, batch_size or self.batch_size, opts)

    def evaluate(self, path: str | Path, batch_size: int | None = None) -> dict[str, Any]:
        dataset = self.task.read_labelled(str(path))
        result = self.task.evaluate(self.model, self.tokenizer, dataset, batch_size or self.batch_size)
        return {**result.metrics, "details": result.details}


def load_run(directory: str | Path, device: str | None = None) -> Run:
    return Run.load(directory, device)
