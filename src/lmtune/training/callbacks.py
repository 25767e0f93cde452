"""Trainer callbacks: a per-step JSONL log in the run dir, and a guard against NaN losses."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Appends every Trainer log record (loss, lr, eval metrics) to train_log.jsonl.

    Appending line by line keeps the log readable after a crash; a resumed run continues it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.start = time.monotonic()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not logs or not state.is_world_process_zero:
            return
        record = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "time_s": round(time.monotonic() - self.start, 3),
        }
        record.update({k: v for k, v in logs.items() if isinstance(v, int | float | str)})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class NonFiniteLossError(RuntimeError):
    pass


class NanGuardCallback(TrainerCallback):
    """Stops training when the logged loss is NaN or infinite, instead of training on garbage."""

    def __init__(self) -> None:
        self.bad_step: int | None = None

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self.bad_step = state.global_step
            control.should_training_stop = True
