"""The Playground page's model side: finished runs loaded with `Run.load` (the few most recently
used kept in memory), predictions through `Run.predict`, and streamed generations.

A generation streams through the task's own `generate_streaming` (what `lmtune serve` streams
with); "base" runs the same generation with the run's peft adapter switched off, so base and
tuned are compared on one loaded model.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

_MAX_INPUTS = 64  # most inputs one playground request may send
_MAX_INPUT_CHARS = 20_000


class LoadedRuns:
    """Up to `capacity` loaded runs (least recently used dropped); one model call at a time each."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._runs: OrderedDict[Path, tuple[Any, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, directory: Path) -> tuple[Any, threading.Lock]:
        from lmtune.run import Run

        with self._lock:
            if directory in self._runs:
                self._runs.move_to_end(directory)
                return self._runs[directory]
        loaded = (Run.load(directory), threading.Lock())  # outside the lock: loading takes seconds
        with self._lock:
            self._runs[directory] = loaded
            while len(self._runs) > self.capacity:
                self._runs.popitem(last=False)
        return loaded

    def forget(self, directory: Path) -> None:
        with self._lock:
            self._runs.pop(directory, None)


def checked_inputs(inputs: Any) -> list[Any]:
    """The request's inputs, bounded in number and size (the task checks their fields)."""
    if not isinstance(inputs, list) or not inputs:
        raise LmtuneError("inputs: give a non-empty list of texts or input objects")
    if len(inputs) > _MAX_INPUTS:
        raise LmtuneError(f"inputs: at most {_MAX_INPUTS} per request, got {len(inputs)}")
    for i, item in enumerate(inputs):
        if not isinstance(item, str | dict):
            raise LmtuneError(f"input {i + 1}: expected a string or an object of the task's input fields")
        if len(str(item)) > _MAX_INPUT_CHARS:
            raise LmtuneError(f"input {i + 1}: longer than {_MAX_INPUT_CHARS} characters")
    return inputs


def predict(runs: LoadedRuns, directory: Path, inputs: Any, options: dict[str, Any] | None) -> list[dict]:
    run, lock = runs.get(directory)
    items = checked_inputs(inputs)
    with lock:
        return run.predict(items, options=options or None)


def generation_item(prompt: str) -> dict[str, Any]:
    """A playground prompt as a one-turn chat (the task renders it as in training)."""
    return {"messages": [{"role": "user", "content": prompt}]}


def stream_generation(
    runs: LoadedRuns, directory: Path, prompt: str, base: bool, options: dict[str, Any] | None = None
) -> Iterator[str]:
    """The generated text of `prompt`, piece by piece, by the tuned model or (base) the same model
    with its adapter off. Raises LmtuneError before the first piece for a run that cannot."""
    from transformers import TextIteratorStreamer

    run, lock = runs.get(directory)
    run.task.require("chat-generation", "the playground's streamed generation")
    if not prompt.strip() or len(prompt) > _MAX_INPUT_CHARS:
        raise LmtuneError(f"prompt: give a non-empty text of at most {_MAX_INPUT_CHARS} characters")
    adapter_off = _adapter_off(run) if base else contextlib.nullcontext()
    item = generation_item(prompt)
    run.task.check_input(0, item)
    settings = run.task.predict_options(options)
    streamer = TextIteratorStreamer(run.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    return _pieces(run, lock, adapter_off, item, settings, streamer)


def _pieces(run: Any, lock: Any, adapter_off: Any, item: dict, settings: Any, streamer: Any) -> Iterator[str]:
    """Generate in a worker thread; yield the streamer's pieces as they come."""
    failure: queue.Queue[BaseException] = queue.Queue()

    def generate() -> None:
        try:
            with lock, adapter_off:
                run.task.generate_streaming(run.model, run.tokenizer, item, settings, streamer)
        except BaseException as exc:  # handed to the reader: the stream ends with it
            failure.put(exc)

    worker = threading.Thread(target=generate, name="board-generate", daemon=True)
    worker.start()
    try:
        yield from streamer
    except queue.Empty:
        raise LmtuneError("the generation stalled (no token for 120 s)") from None
    worker.join(timeout=5)
    if not failure.empty():
        exc = failure.get()
        raise exc if isinstance(exc, LmtuneError) else LmtuneError(f"generation failed: {exc}")


def _adapter_off(run: Any) -> Any:
    from lmtune.methods import get_method_class

    get_method_class(run.config.method.name).require(
        "peft-adapter", "base vs tuned in the playground", hint="the base model is compared for adapter runs"
    )
    return run.model.disable_adapter()
