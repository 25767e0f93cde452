"""Dynamic micro-batching: many small requests, few model forwards.

Requests wait in a bounded queue. One worker (an asyncio task) takes the oldest request and,
when requests are arriving concurrently (others already queued, or the last round held more than
one), keeps collecting until it holds `max_batch_size` items or the oldest request has waited
`max_wait_ms` since it arrived (requests that queued during a forward go at once); a lone
request on an idle server goes straight to the model, since nothing would join it. It then runs
one forward per group of items that share prediction options and a batch key (`group_key`:
one adapter's name, or one key for adapters that can share a forward, as LoRA adapters on one
base can), and resolves each request's future with its own slice of the results.

The model runs in a single dedicated thread: the event loop stays free to accept requests
while a forward runs, and everything that touches the model (forwards, adapter switches,
loading and removing adapters) is serialised through that one thread, so an adapter is never
switched or loaded in the middle of a forward.

Written here because neither FastAPI nor uvicorn batches requests; Ray Serve and Triton do,
but they are whole serving stacks, far heavier than this one queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune.serving")

T = TypeVar("T")
# runner(adapters, items, options, batch_size) -> one prediction per item, in order; adapters
# holds each item's adapter name. A result may be an exception: it fails that item's request.
Runner = Callable[[list[str], list[dict[str, Any]], dict[str, Any], int], list[Any]]


class QueueFullError(Exception):
    """The request queue is full; the client should retry later."""


class RequestTimeoutError(Exception):
    """The request waited (queue + forward) longer than its time limit."""


class BatcherStoppedError(Exception):
    """The server is shutting down and no longer takes requests."""


@dataclass
class _Job:
    adapter: str
    options_key: str
    options: dict[str, Any]
    items: list[dict[str, Any]]
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0  # the event loop's clock when it was queued


class MicroBatcher:
    """A bounded request queue and the single worker that batches it into model forwards."""

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        batching: bool = True,
        forward_batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        group_key: Callable[[str], str] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        # Off (or a batch of one): every request is its own forward, the baseline a benchmark needs.
        self.batching = batching and max_batch_size > 1
        self.forward_batch_size = forward_batch_size or max_batch_size
        self.on_batch = on_batch or (lambda size: None)
        # Requests whose adapters have equal keys may share a forward (default: same adapter only).
        self.group_key = group_key or (lambda adapter: adapter)
        self._queue: asyncio.Queue[_Job] | None = None
        self._last_round_jobs = 0
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmtune-model")
        self._task = asyncio.create_task(self._worker(), name="lmtune-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(BatcherStoppedError("the server is shutting down"))
        if self._executor is not None:
            # Let a running forward finish (a few ms to seconds); nothing new is started.
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: self._executor.shutdown(wait=True, cancel_futures=True)
            )
            self._executor = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def depth(self) -> int:
        """Requests waiting in the queue (not counting those in the forward now running)."""
        return self._queue.qsize() if self._queue is not None else 0

    # ---- requests ----------------------------------------------------------------------------
    async def submit(
        self,
        adapter: str,
        items: list[dict[str, Any]],
        options: dict[str, Any],
        options_key: str,
        timeout_s: float,
    ) -> list[dict[str, Any]]:
        """Queue one request and wait for its predictions (raises QueueFull/RequestTimeout)."""
        if self._queue is None or not self.running:
            raise BatcherStoppedError("the batcher is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        try:
            self._queue.put_nowait(_Job(adapter, options_key, options, items, future, loop.time()))
        except asyncio.QueueFull:
            raise QueueFullError(f"{self.max_queue} requests are already waiting") from None
        self._arrived.set()
        try:
            # shield: a timeout must not cancel the future the worker resolves; we cancel it
            # ourselves below so that the worker skips the job if it has not started it yet.
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise RequestTimeoutError(f"no answer within {timeout_s:g} s") from None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the model thread, between forwards (adapter loading and removal)."""
        if self._executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- the worker --------------------------------------------------------------------------
    async def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """Requests for one round: up to max_batch_size items or max_wait, whichever is first;
        only the first request when it arrived alone on an idle server."""
        assert self._queue is not None
        batch, size = [first], len(first.items)
        concurrent = self._last_round_jobs > 1 or not self._queue.empty()
        self._last_round_jobs = 1
        if not self.batching or not concurrent:
            return batch, None
        # max_wait bounds how long the oldest request waits for company, counted from its arrival:
        # requests that queued during the previous forward go at once, not max_wait later.
        deadline = first.arrived + self.max_wait_s
        loop = asyncio.get_running_loop()
        while size < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                # Wait on an event rather than wait_for(queue.get()): a get cancelled by the
                # timeout can swallow an item on Python < 3.12.
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                continue
            job = self._queue.get_nowait()
            if size + len(job.items) > self.max_batch_size:
                return batch, job  # it opens the next round instead of overfilling this one
            batch.append(job)
            size += len(job.items)
            self._last_round_jobs = len(batch)
        return batch, None

    async def _worker(self) -> None:
        assert self._queue is not None
        carry: _Job | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            batch, carry = await self._collect(first)
            groups: dict[tuple[str, str], list[_Job]] = {}
            for job in batch:
                if not job.future.done():  # timed-out requests are skipped, not computed
                    groups.setdefault((self.group_key(job.adapter), job.options_key), []).append(job)
            for jobs in groups.values():
                await self._forward(jobs)

    async def _forward(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        adapters = [job.adapter for job in jobs for _ in job.items]
        self.on_batch(len(items))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor,
                self.runner,
                adapters,
                items,
                jobs[0].options,
                self.forward_batch_size,
            )
            if len(results) != len(items):
                raise RuntimeError(f"{len(results)} predictions for {len(items)} inputs")
        except Exception as exc:  # every request of the group gets the error (inputs are pre-checked)
            if not isinstance(exc, LookupError | LmtuneError):
                log.exception("prediction failed for %d items", len(items))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            end = start + len(job.items)
            mine = results[start:end]
            failed = next((r for r in mine if isinstance(r, BaseException)), None)
            if not job.future.done():
                if failed is not None:
                    job.future.set_exception(failed)
                else:
                    job.future.set_result(mine)
            start = end
