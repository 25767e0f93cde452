"""Ensembles of finished classification runs: average the members' class probabilities.

Averaging probabilities (soft voting) is the simplest ensemble that usually beats its best
member; it needs members that predict the same label set in the same order, which is checked
first. Each member tokenizes the data with its own tokenizer, so members may differ in base
model, method and max_length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lmtune.errors import LmtuneError


def _check_members(runs: list[Any]) -> None:
    first = runs[0]
    for run in runs:
        run.task.require(
            "class-probabilities",
            f"an ensemble ({run.directory})",
            hint="ensembles average class probabilities; give classification runs",
        )
    from lmtune.run import first_mismatch

    for run in runs[1:]:
        # Members may differ in base model and method: they are averaged, not merged.
        mismatch = first_mismatch(run.config, first.config, ("task", "labels", "multi_label"))
        if mismatch is not None:
            what, mine, theirs = mismatch
            raise LmtuneError(
                f"{run.directory} has {what} {mine!r}, but {first.directory} has {theirs!r}",
                hint="ensemble runs trained on the same task with the same labels in the same order",
            )


def member_probabilities(run: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(gold label ids, class probabilities) of one run on a labelled file, in file order."""
    dataset = run.task.read_labelled(path)
    features = [dict(row) for row in run.task.tokenize(dataset, run.tokenizer)]
    probs = run.task.probabilities(run.model, run.tokenizer, features, run.batch_size)
    gold = np.asarray([f["labels"] for f in features])
    return gold, probs


def ensemble(run_dirs: list[str | Path], data: str, device: str | None = None) -> dict[str, Any]:
    """Metrics of the probability-averaging ensemble of `run_dirs` on `data`, beside each member's."""
    from lmtune.run import load_run

    if len(run_dirs) < 2:
        raise LmtuneError(
            "an ensemble needs at least two run directories", hint="lmtune ensemble RUN RUN ..."
        )
    names = [str(d) for d in run_dirs]
    if len(set(names)) != len(names):
        raise LmtuneError("a run directory is given twice", hint="list each member once")
    runs = [load_run(d, device) for d in run_dirs]
    _check_members(runs)
    gold: np.ndarray | None = None
    all_probs = []
    members: dict[str, Any] = {}
    for name, run in zip(names, runs, strict=True):
        labels, probs = member_probabilities(run, data)
        if gold is None:
            gold = labels
        elif not np.array_equal(gold, labels):  # pragma: no cover - same file, same labels
            raise LmtuneError(f"{name}: reads different gold labels from {data}")
        all_probs.append(probs)
        members[name] = run.task.scores(labels, probs).metrics
    assert gold is not None
    mean = np.mean(np.stack(all_probs), axis=0)
    result = runs[0].task.scores(gold, mean)
    return {
        "data": str(data),
        "method": "mean of class probabilities",
        "ensemble": result.metrics,
        "members": members,
        "details": result.details,
    }
