"""The micro-batcher's collection policy: a lone request is not held back waiting for company,
and requests that arrive while a forward runs share the next one."""

from __future__ import annotations

import asyncio
import threading
import time

from lmtune.serving.batcher import MicroBatcher


def _recording_runner(forwards: list[list[str]], gate: threading.Event | None = None):
    def runner(adapters, items, options, batch_size):
        if gate is not None and not forwards:
            gate.wait(10)  # hold the first forward so that others queue behind it
        forwards.append([item["text"] for item in items])
        return [{"text": item["text"]} for item in items]

    return runner


def test_a_lone_request_on_an_idle_server_does_not_wait_for_company() -> None:
    forwards: list[list[str]] = []

    async def scenario() -> float:
        batcher = MicroBatcher(_recording_runner(forwards), max_wait_ms=5000)
        await batcher.start()
        try:
            started = time.perf_counter()
            for text in ("one", "two"):  # one after the other: never concurrent
                await batcher.submit("default", [{"text": text}], {}, "", timeout_s=30)
            return time.perf_counter() - started
        finally:
            await batcher.stop()

    # Holding each for max_wait would take 10 s.
    assert asyncio.run(scenario()) < 2.5
    assert forwards == [["one"], ["two"]]


def test_requests_queued_behind_a_forward_share_the_next_one() -> None:
    forwards: list[list[str]] = []
    gate = threading.Event()

    async def scenario() -> list:
        batcher = MicroBatcher(_recording_runner(forwards, gate), max_wait_ms=50, max_batch_size=8)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit("default", [{"text": "first"}], {}, "", 30))
            await asyncio.sleep(0.05)  # the first forward is running (held at the gate)
            rest = [
                asyncio.create_task(batcher.submit("default", [{"text": f"r{i}"}], {}, "", 30))
                for i in range(5)
            ]
            await asyncio.sleep(0.05)
            gate.set()
            return await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()

    replies = asyncio.run(scenario())
    assert [r[0]["text"] for r in replies] == ["first", "r0", "r1", "r2", "r3", "r4"]
    assert forwards == [["first"], ["r0", "r1", "r2", "r3", "r4"]]


def test_requests_that_waited_through_a_forward_go_without_a_further_wait() -> None:
    """max_wait counts from the oldest request's arrival: requests queued behind a forward that
    took longer than max_wait are sent to the model as soon as it finishes."""
    forwards: list[list[str]] = []
    gate = threading.Event()

    async def scenario() -> float:
        batcher = MicroBatcher(_recording_runner(forwards, gate), max_wait_ms=3000, max_batch_size=8)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit("default", [{"text": "first"}], {}, "", 30))
            await asyncio.sleep(0.05)
            rest = [
                asyncio.create_task(batcher.submit("default", [{"text": f"r{i}"}], {}, "", 30))
                for i in range(3)
            ]
            await asyncio.sleep(3.2)  # the first forward outlasts max_wait
            released = time.perf_counter()
            gate.set()
            await asyncio.gather(first, *rest)
            return time.perf_counter() - released
        finally:
            await batcher.stop()

    # Waiting max_wait again after the first forward would take 3 s more.
    assert asyncio.run(scenario()) < 1.5
    assert forwards == [["first"], ["r0", "r1", "r2"]]
