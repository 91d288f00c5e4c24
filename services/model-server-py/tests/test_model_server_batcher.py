"""neutrino_model_server.batcher: the batching rules, driven directly (no sockets, no processes)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from neutrino_model_server.batcher import Batcher, DeadlineExceeded, QueueFull


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail_on: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, values: list[Any]) -> list[Any]:
        self.batches.append(values)
        await self.release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in values:
            raise ValueError(f"bad {self.fail_on}")
        return [v * 10 for v in values]


def in_loop(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on its own event loop (the repository does not use pytest-asyncio)."""

    @functools.wraps(fn)
    def run() -> None:
        asyncio.run(asyncio.wait_for(fn(), 10))

    return run


def far() -> float:
    return time.monotonic() + 60


async def started(batcher: Batcher) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(batcher.run())
    await asyncio.sleep(0)
    return task


@in_loop
async def test_lone_request_after_idle_is_not_delayed_by_the_window() -> None:
    rec = Recorder()
    batcher = Batcher(rec, max_batch_size=32, batch_wait_s=5.0, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)
    t0 = time.monotonic()
    (fut,) = batcher.submit([1], far())
    assert await asyncio.wait_for(fut, 1.0) == 10
    assert time.monotonic() - t0 < 1.0  # a 5 s window would have been waited otherwise
    loop_task.cancel()


@in_loop
async def test_requests_waiting_behind_a_running_batch_form_the_next_batch() -> None:
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec, max_batch_size=8, batch_wait_s=0.001, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)
    first = batcher.submit([0], far())
    await asyncio.sleep(0.01)
    rest = batcher.submit(list(range(1, 21)), far())
    rec.release.set()
    results = await asyncio.gather(*first, *rest)
    assert results == [v * 10 for v in range(21)]
    assert [len(b) for b in rec.batches] == [1, 8, 8, 4]
    loop_task.cancel()


@in_loop
async def test_a_batch_waits_for_company_when_not_idle() -> None:
    rec = Recorder(delay_s=0.05)
    batcher = Batcher(rec, max_batch_size=4, batch_wait_s=0.2, max_concurrency=2, max_queue=100)
    loop_task = await started(batcher)
    a = batcher.submit([1], far())  # idle: goes at once
    await asyncio.sleep(0.01)
    b = batcher.submit([2], far())  # a batch is running: waits up to 0.2 s for company
    await asyncio.sleep(0.01)
    c = batcher.submit([3], far())
    await asyncio.gather(*a, *b, *c)
    assert rec.batches == [[1], [2, 3]]
    loop_task.cancel()


@in_loop
async def test_an_error_answers_every_request_of_its_batch_only() -> None:
    rec = Recorder(fail_on=2)
    rec.release.clear()
    batcher = Batcher(rec, max_batch_size=3, batch_wait_s=0.0, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)
    futs = batcher.submit([0], far())
    await asyncio.sleep(0.01)
    futs += batcher.submit([1, 2, 3, 4, 5, 6], far())
    rec.release.set()
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert results[0] == 0
    assert [type(r) for r in results[1:4]] == [ValueError] * 3
    assert results[4:] == [40, 50, 60]
    loop_task.cancel()


@in_loop
async def test_a_full_queue_refuses_at_once() -> None:
    rec = Recorder()
    batcher = Batcher(rec, max_batch_size=2, batch_wait_s=0.0, max_concurrency=1, max_queue=3)
    batcher.submit([1, 2, 3], far())  # no loop running: they stay queued
    with pytest.raises(QueueFull):
        batcher.submit([4], far())
    assert batcher.queued == 3


@in_loop
async def test_expired_and_abandoned_inputs_never_reach_predict() -> None:
    rec = Recorder()
    batcher = Batcher(rec, max_batch_size=8, batch_wait_s=0.0, max_concurrency=1, max_queue=10)
    (expired,) = batcher.submit([1], time.monotonic() - 1)
    (abandoned,) = batcher.submit([2], far())
    abandoned.cancel()
    (kept,) = batcher.submit([3], far())
    loop_task = await started(batcher)
    assert await kept == 30
    with pytest.raises(DeadlineExceeded):
        await expired
    assert rec.batches == [[3]]
    loop_task.cancel()
