"""neutrino_model_server.batcher: the batching rules, driven directly (no sockets, no processes)."""

from __future__ import annotations

import asyncio
import contextlib
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


@in_loop
async def test_an_inline_call_holds_the_slot_the_waiting_loop_would_take() -> None:
    """Rule 2 with rule 7: the loop, idle and waiting for an input, must not start a second predict
    beside an inline one; inputs queue behind it and go as one batch when it ends."""
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec, max_batch_size=16, batch_wait_s=0.001, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)
    inline = asyncio.ensure_future(batcher.call([1], far()))
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(batcher.call([v], far())) for v in (2, 3, 4)]
    await asyncio.sleep(0.05)  # several of the loop's batch windows
    assert rec.batches == [[1]] and batcher.queued == 3
    rec.release.set()
    assert await inline == [10] and [await q for q in queued] == [[20], [30], [40]]
    assert rec.batches == [[1], [2, 3, 4]]
    loop_task.cancel()


@in_loop
async def test_after_a_batch_of_several_callers_the_first_back_waits_for_the_rest() -> None:
    """Rule 3's exception: the callers of a batch of several come back one by one; the first back
    waits (up to the window) until as many have queued as that batch had, instead of running alone."""
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec, max_batch_size=8, batch_wait_s=0.5, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)
    first = asyncio.ensure_future(batcher.call([0], far()))  # idle: inline, alone
    await asyncio.sleep(0)
    calls = [asyncio.ensure_future(batcher.call([v], far())) for v in (1, 2, 3)]
    await asyncio.sleep(0.01)
    rec.release.set()
    assert await first == [0] and [await c for c in calls] == [[10], [20], [30]]
    assert rec.batches == [[0], [1, 2, 3]]
    t0 = time.monotonic()
    back = [asyncio.ensure_future(batcher.call([v], far())) for v in (4, 5)]
    await asyncio.sleep(0.01)
    assert rec.batches == [[0], [1, 2, 3]]  # two of three back: still waiting
    back.append(asyncio.ensure_future(batcher.call([6], far())))
    assert [await b for b in back] == [[40], [50], [60]]
    assert rec.batches[-1] == [4, 5, 6] and time.monotonic() - t0 < 0.4  # went when the third came back
    loop_task.cancel()


@in_loop
async def test_a_lone_caller_is_not_kept_waiting_for_company() -> None:
    """After a batch from one request (however many inputs) a lone request goes at once; after a
    batch of several, one request waits the window for the others, then lone ones go at once again
    (rules 3 and 7)."""
    rec = Recorder(delay_s=0.02)
    batcher = Batcher(rec, max_batch_size=8, batch_wait_s=0.3, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)
    assert await batcher.call([1, 2, 3], far()) == [10, 20, 30]  # one request of three inputs
    t0 = time.monotonic()
    assert await batcher.call([4], far()) == [40]
    assert time.monotonic() - t0 < 0.25  # not the 0.3 s window
    several = [asyncio.ensure_future(batcher.call([v], far())) for v in (5, 6, 7)]
    assert [await c for c in several] == [[50], [60], [70]]
    assert rec.batches[-2:] == [[5], [6, 7]]  # 5 alone (after a batch of one caller), 6 and 7 together
    t0 = time.monotonic()
    assert await batcher.call([8], far()) == [80]  # company was due: it waited the window, alone
    assert time.monotonic() - t0 > 0.29
    t0 = time.monotonic()
    assert await batcher.call([9], far()) == [90]
    assert time.monotonic() - t0 < 0.25
    loop_task.cancel()


@in_loop
async def test_deadlines_are_kept_inline_queued_and_in_a_running_batch() -> None:
    """Rule 8: a caller gets DeadlineExceeded at its deadline wherever its inputs are; the batch it
    was in goes on for the callers whose deadline is later."""
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec, max_batch_size=4, batch_wait_s=0.0, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)
    t0 = time.monotonic()
    inline = asyncio.ensure_future(batcher.call([1], t0 + 0.1))  # idle: runs inline, predict hangs
    await asyncio.sleep(0)
    queued = asyncio.ensure_future(batcher.call([2], t0 + 0.2))  # behind it, never reaches predict
    later = asyncio.ensure_future(batcher.call([3], t0 + 5))
    with pytest.raises(DeadlineExceeded):
        await inline
    assert time.monotonic() - t0 > 0.09
    with pytest.raises(DeadlineExceeded):
        await queued
    assert time.monotonic() - t0 > 0.19
    assert not later.done()
    rec.release.set()
    assert await later == [30]
    # In a running batch: the short deadline fails alone, its batch-mate is answered.
    rec.delay_s = 0.3  # every predict call now takes 0.3 s
    t0 = time.monotonic()
    blocker = asyncio.ensure_future(batcher.call([9], t0 + 5))  # inline, 0 to 0.3 s
    await asyncio.sleep(0)
    short = asyncio.ensure_future(batcher.call([4], t0 + 0.45))  # its batch runs from 0.3 to 0.6 s
    long = asyncio.ensure_future(batcher.call([5], t0 + 5))
    with pytest.raises(DeadlineExceeded):
        await short
    assert time.monotonic() - t0 > 0.44 and rec.batches[-1] == [4, 5]
    assert not long.done()  # failed at its deadline, not when the batch ended
    assert await long == [50] and await blocker == [90]
    loop_task.cancel()


@in_loop
async def test_an_inline_call_cancelled_by_its_caller_is_cancelled_not_past_its_deadline() -> None:
    """Rule 8 inline: the deadline timer's cancel is told from another's (a client that hung up), and
    either way the predict slot is given back."""
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec, max_batch_size=4, batch_wait_s=0.0, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)
    inline = asyncio.ensure_future(batcher.call([1], far()))  # idle: inline, predict hangs
    await asyncio.sleep(0)
    assert rec.batches == [[1]]
    inline.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inline
    rec.release.set()
    assert await asyncio.wait_for(batcher.call([2], far()), 1.0) == [20]  # the slot is free again
    loop_task.cancel()


@in_loop
async def test_an_inline_predict_that_swallows_the_deadline_cancel_leaves_no_cancel_behind() -> None:
    """An async predict that catches the deadline timer's cancel and answers anyway: its answer is
    given, and the caller's task is not left cancelling (as `asyncio.timeout` leaves it)."""

    async def stubborn(values: list[Any]) -> list[Any]:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return [v * 10 for v in values]

    batcher = Batcher(stubborn, max_batch_size=1, batch_wait_s=0.0, max_concurrency=1, max_queue=100)
    loop_task = await started(batcher)

    async def caller() -> tuple[list[Any], int]:
        out = await batcher.call([3], time.monotonic() + 0.05)
        task = asyncio.current_task()
        assert task is not None
        return out, task.cancelling()

    assert await caller() == ([30], 0)
    loop_task.cancel()
