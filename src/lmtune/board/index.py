"""The runs index: every run directory under the runs root, one summary row each, cached.

A run directory is any folder holding `run.json` (written by `lmtune train`); a folder holding
`comparison.json` (`lmtune compare`) or `sweep.json` (`lmtune sweep`) is a collection. The walk
skips what cannot hold runs (model/, checkpoints, event files), and a row is rebuilt only when
one of its run's files changed (size or mtime), so listing 500 runs costs a walk of stats.
Files are read with the same functions `Run.load` and `eval` use (`read_state`, `read_metrics`,
`RunConfig.from_yaml`).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmtune.board.roots import relative_to_root
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.run import STATE_FILE, read_metrics, read_state

# Folders inside a run that never hold another run: not walked.
_SKIPPED = {"model", "tensorboard", "predictions", "__pycache__", "mlruns", "wandb", "node_modules"}
# The files whose change invalidates a cached row.
_WATCHED = (STATE_FILE, "metrics.json", "config.yaml", "train_log.jsonl")
COLLECTION_FILES = {"comparison.json": "compare", "sweep.json": "sweep"}


@dataclass
class IndexedRun:
    """One run directory as the board knows it: its row and its resolved config (None when the
    config cannot be read, e.g. a task this installation does not have)."""

    directory: Path
    row: dict[str, Any]
    config: RunConfig | None
    metrics: dict[str, Any]
    state: dict[str, Any]


class RunIndex:
    """Scans the runs root; `runs()` gives fresh rows, re-reading only runs whose files changed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[Path, tuple[tuple, IndexedRun]] = {}
        self._lock = threading.Lock()

    def scan(self) -> tuple[list[IndexedRun], list[dict[str, Any]]]:
        """(runs, newest first; collections) under the root."""
        runs: list[IndexedRun] = []
        collections: list[dict[str, Any]] = []
        seen: set[Path] = set()
        for directory, names in _walk(self.root):
            if STATE_FILE in names:
                seen.add(directory)
                runs.append(self.get(directory))
            kind = next((k for name, k in COLLECTION_FILES.items() if name in names), None)
            if kind:
                collections.append(self._collection(directory, kind))
        with self._lock:
            for gone in set(self._cache) - seen:
                del self._cache[gone]
        runs.sort(key=lambda r: r.row["updated"] or "", reverse=True)
        collections.sort(key=lambda c: c["updated"], reverse=True)
        return runs, collections

    def get(self, directory: Path) -> IndexedRun:
        """The run in `directory` (cached until one of its files changes); status is always live."""
        signature = _signature(directory)
        with self._lock:
            cached = self._cache.get(directory)
        if cached is None or cached[0] != signature:
            cached = (signature, self._read(directory))
            with self._lock:
                self._cache[directory] = cached
        run = cached[1]
        run.row["status"], run.row["progress"] = _live_status(run)
        return run

    def _read(self, directory: Path) -> IndexedRun:
        state = read_state(directory) or {}
        metrics = read_metrics(directory)
        config = _config(directory)
        raw = state.get("config") or {}
        task = config.task.type if config else (raw.get("task") or {}).get("type")
        method = config.method.name if config else (raw.get("method") or {}).get("name")
        model = config.model.name if config else (raw.get("model") or {}).get("name")
        train = metrics.get("train") or {}
        row = {
            "path": relative_to_root(self.root, directory),
            "name": relative_to_root(self.root, directory),
            "status": state.get("status", "unknown"),
            "error": state.get("error"),
            "task": task,
            "method": method,
            "model": model,
            "metric": main_metric(config, metrics),
            "trainable_percent": train.get("trainable_percent"),
            "trainable_params": train.get("trainable_params"),
            "train_time_s": train.get("runtime_s"),
            "peak_rss_mb": train.get("peak_rss_mb"),
            "updated": state.get("finished") or state.get("updated"),
            "progress": None,
        }
        return IndexedRun(directory, row, config, metrics, state)

    def _collection(self, directory: Path, kind: str) -> dict[str, Any]:
        stamp = max(p.stat().st_mtime for p in directory.iterdir() if p.is_file())
        return {
            "path": relative_to_root(self.root, directory),
            "name": relative_to_root(self.root, directory),
            "kind": kind,
            "updated": datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds"),
        }


def _walk(root: Path) -> Any:
    """(directory, file names) for every folder under root, not following symlinks, skipping
    folders that never hold runs."""
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _SKIPPED and not d.startswith(".") and not d.startswith("checkpoint-")
        )
        yield Path(directory), set(filenames)


def _signature(directory: Path) -> tuple:
    out = []
    for name in _WATCHED:
        try:
            stat = (directory / name).stat()
            out.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _config(directory: Path) -> RunConfig | None:
    try:
        return RunConfig.from_yaml(directory / "config.yaml")
    except (LmtuneError, OSError):
        return None


def main_metric(config: RunConfig | None, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The metric the run was selected by (train.metric_for_best_model), on test if the run has a
    test split, else on validation."""
    if config is None:
        return None
    from lmtune.tasks import get_task_class

    metric, greater = get_task_class(config.task.type).metric_direction(config.train.metric_for_best_model)
    name = metric.removeprefix("eval_")
    for split in ("test", "validation"):
        value = (metrics.get(split) or {}).get(name)
        if isinstance(value, int | float):
            return {"name": name, "split": split, "value": value, "greater_is_better": greater}
    return None


def _live_status(run: IndexedRun) -> tuple[str, float | None]:
    """The status, with a `running` run whose process is gone on this host read as interrupted
    (killed without the chance to say so), and a running run's progress from its training log."""
    state = run.state
    status = state.get("status", "unknown")
    if status == "corrupt":
        return "failed", None
    if status != "running":
        return status, None
    pid, host = state.get("pid"), state.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
        return "interrupted", None
    return "running", _progress(run)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _progress(run: IndexedRun) -> float | None:
    """Epochs done / epochs planned (or steps / max_steps), from the last line of train_log.jsonl."""
    import json

    log = run.directory / "train_log.jsonl"
    if run.config is None or not log.is_file():
        return 0.0 if run.config is not None else None
    with open(log, "rb") as fh:
        fh.seek(max(0, log.stat().st_size - 8192))
        lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    last: dict[str, Any] = {}
    for line in reversed(lines):  # the last line may be half-written
        try:
            last = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    t = run.config.train
    if t.max_steps:
        return min(1.0, last.get("step", 0) / t.max_steps)
    return min(1.0, float(last.get("epoch", 0.0)) / t.epochs) if t.epochs else None
