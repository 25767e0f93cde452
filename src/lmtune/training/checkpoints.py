"""Checkpoints you can trust: sealed when complete, verified before resuming, rotated safely.

Trainer writes `checkpoint-STEP/` file by file (weights or adapter, optimizer.pt, scheduler.pt,
scaler.pt, rng_state.pth, trainer_state.json with the data position) with plain writes, so a
kill can leave a directory that looks finished but holds a truncated file. Trainer also
rotates old checkpoints *inside* `_save_checkpoint`, before the new one is known to be
complete, so with `save_total_limit` 1 (or with the best checkpoint protected) a kill at the
wrong moment could leave no usable checkpoint at all.

So lmtune:
  * turns Trainer's own rotation off (`save_total_limit=None` in TrainingArguments);
  * seals each checkpoint from `on_save`, which Trainer calls after `_save_checkpoint` has
    returned: every file is fsynced, then `lmtune_checkpoint.json` (step, run fingerprint,
    size and sha256 of every file) is written atomically;
  * rotates afterwards, among sealed checkpoints only, always keeping the newest and the best;
  * resumes only from a sealed checkpoint whose files still match the seal, after removing
    any checkpoint directory that is not.

`optimizer.pt`, `scheduler.pt`, `scaler.pt` and `rng_state.pth` are torch pickles internal to
Trainer; transformers loads each of them with `torch.load(..., weights_only=True)` (for the RNG
state with numpy's array/dtype reconstructors allow-listed). `training_args.bin` is written by
Trainer and never loaded. Checkpoints are deleted after a successful run unless kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lmtune._version import __version__
from lmtune.io import write_json

MARKER = "lmtune_checkpoint.json"
PREFIX = "checkpoint-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER)


def seal(directory: str | Path, step: int, fingerprint: str | None = None) -> None:
    """Mark a fully written checkpoint as complete (fsync every file, then the marker)."""
    directory = Path(directory)
    files = {}
    for path in _files(directory):
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        files[str(path.relative_to(directory))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    write_json(
        directory / MARKER,
        {"step": step, "fingerprint": fingerprint, "lmtune_version": __version__, "files": files},
    )


def problem(directory: str | Path, fingerprint: str | None = None) -> str | None:
    """Why `directory` is not a usable checkpoint, or None when it is sealed and intact."""
    directory = Path(directory)
    try:
        marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
    except FileNotFoundError:
        return "not sealed (the save was interrupted)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {MARKER}"
    if fingerprint is not None and marker.get("fingerprint") not in (None, fingerprint):
        return "written by a different configuration"
    if "trainer_state.json" not in files:
        return "has no trainer_state.json"
    for name, meta in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta.get("size"):
            return f"{name} has the wrong size"
        if _sha256(path) != meta.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def _step_dirs(out: Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(out).glob(f"{PREFIX}*"):
        suffix = path.name.removeprefix(PREFIX)
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def sealed(out: str | Path) -> list[Path]:
    """Sealed checkpoint directories, oldest first (marker present; contents not re-hashed)."""
    return [path for _, path in _step_dirs(Path(out)) if (path / MARKER).is_file()]


def remove_unusable(out: str | Path, fingerprint: str | None = None) -> list[str]:
    """Delete checkpoint directories that are unsealed or fail verification; returns their names."""
    removed = []
    for _, path in _step_dirs(Path(out)):
        if problem(path, fingerprint) is not None:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def newest_usable(out: str | Path, fingerprint: str | None = None) -> Path | None:
    """The newest checkpoint that is sealed and whose files still match the seal."""
    for _, path in reversed(_step_dirs(Path(out))):
        if problem(path, fingerprint) is None:
            return path
    return None


def rotate(out: str | Path, keep: int, best: str | None = None) -> None:
    """Keep at most `keep` sealed checkpoints, never dropping the newest or the best one."""
    complete = sealed(out)
    protected = {complete[-1].resolve()} if complete else set()
    if best:
        protected.add(Path(best).resolve())
    excess = len(complete) - max(keep, len(protected & {p.resolve() for p in complete}))
    for path in complete:
        if excess <= 0:
            break
        if path.resolve() not in protected:
            shutil.rmtree(path, ignore_errors=True)
            excess -= 1


class CheckpointSealCallback(TrainerCallback):
    """Seals each checkpoint once Trainer has finished writing it, then rotates old ones."""

    def __init__(self, keep: int, fingerprint: str | None = None) -> None:
        self.keep = keep
        self.fingerprint = fingerprint

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if directory.is_dir():
            seal(directory, state.global_step, self.fingerprint)
        rotate(args.output_dir, self.keep, state.best_model_checkpoint)
