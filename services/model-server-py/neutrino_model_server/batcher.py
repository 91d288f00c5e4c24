"""Adaptive batching: a bounded queue of inputs and the loop that turns it into `predict` calls.

Rules (each one a test in tests/test_model_server_batcher.py):

1. An input joins the queue only if fewer than `max_queue` wait; otherwise `submit` raises
   `QueueFull` at once (the API answers 429 with Retry-After).
2. The loop starts a batch when a predict slot is free (at most `max_concurrency` run at once).
   Its first input is the oldest queued one.
3. Idle: if the loop had to wait for that input and no batch is running, the batch goes at once
   with whatever is queued by then, so a lone caller is never delayed by the wait window;
   unless company is due: the last batch carried several requests' inputs. Its callers (clients
   looping on the model) are coming back, each a round trip later (longer from a busy client),
   so the batch waits until it holds as many inputs as that batch did, or `batch_wait_s` has
   passed since its first input arrived. Going at once there would run predict for the first
   caller back alone: a call that costs nearly what a full batch does (the digits MLP: 114 µs for
   1 input, 168 µs for 32), after every batch. Where no one comes back (a burst ended), one
   request waits the window, and its batch of one caller turns the rule off again.
4. Otherwise the batch waits for more inputs until it holds `max_batch_size` or `batch_wait_s`
   has passed since its first input arrived. While predict is busy inputs pile up, so under load
   batches fill without waiting at all.
5. An input whose caller gave up (future cancelled) or whose deadline passed is dropped when the
   batch is formed; the latter's caller gets `DeadlineExceeded`.
6. If `run_batch` raises, every input of that batch gets the exception.
7. Inline: when nothing is queued and a predict slot is free (for a batching model: when no batch
   is running at all and no company is due, as in rule 3), `call` runs the request's inputs as a
   batch on the caller's own task, skipping the loop's wake-up, its task and a future per input
   (about a third of a no-op request's time).
8. `call` answers `DeadlineExceeded` at the request's deadline, wherever its inputs are: queued,
   in a running batch (which goes on for the others), or inline (the timer cancels the caller's
   task). All callers share one timer, set for the earliest deadline and at most `SWEEP_S` ahead
   (to forget the answered ones): a timer of its own per request (`asyncio.timeout` on uvloop)
   costs about what parsing an image's JSON does, some 4-5 µs.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import tracing

log = logging.getLogger("neutrino.model_server")

SWEEP_S = 0.1  # the deadline timer's longest sleep while callers wait (rule 8)


class QueueFull(Exception):
    """The queue holds `max_queue` inputs; try again shortly or another replica."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its input reached predict."""


@dataclass(slots=True)
class _Item:
    value: Any
    future: asyncio.Future[Any]
    arrived: float
    deadline: float
    link: Any = None  # the request's span context, for the batch span's links (tracing.py)
    first: bool = True  # the first of its request's inputs: batches count their callers by these (rule 3)


class _Waiter(Protocol):
    """What the deadline timer fails at a deadline (rule 8): a queued input's future, or an `_Inline`."""

    def done(self) -> bool: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Inline:
    """An inline call (rule 7) among the deadline timer's waiters: at its deadline the timer cancels
    the caller's task, which `call` turns into `DeadlineExceeded`. `asyncio.timeout` would do the
    same with a timer of its own per request, some 5 µs on uvloop: a twentieth of a no-op request."""

    __slots__ = ("expired", "finished", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.finished = False
        self.expired = False

    def done(self) -> bool:
        return self.finished or self.expired

    def set_exception(self, exception: BaseException, /) -> None:
        self.expired = True
        self.task.cancel()


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[list[Any]], Awaitable[list[Any]]],
        *,
        max_batch_size: int,
        batch_wait_s: float,
        max_concurrency: int,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._wake: asyncio.Future[None] | None = None
        # Queued inputs at which an arrival wakes the loop: 1 while it waits for an input, the batch's
        # target while it waits for company (rules 3, 4); None while it waits for a predict slot, which
        # only a batch's end gives. Woken by every arrival instead, it woke 0.65 times per request
        # (about 2.5 µs each) under the trickle of arrivals from aiohttp's client, 0.23 times now.
        self._want: int | None = 1
        self._running = 0
        self._batches: set[asyncio.Task[None]] = set()
        # The last batch to end: its inputs and its callers (requests), for rule 3.
        self._last_size = 0
        self._last_callers = 0
        # Callers' (deadline, order, waiters), earliest first, and the timer that enforces them (rule 8).
        self._deadlines: list[tuple[float, int, Sequence[_Waiter]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def call(self, values: list[Any], deadline: float) -> list[Any]:
        """The outputs for `values`, or `DeadlineExceeded` at `deadline` (`time.monotonic()` based):
        run at once when idle (rule 7), else queued (rules 1-6, 8)."""
        if self.max_batch_size == 1:
            free = self._running < self.max_concurrency
        else:
            free = self._running == 0 and not self._company_due()
        if free and not self._queue and len(values) <= self.max_batch_size:
            task = asyncio.current_task()
            assert task is not None, "Batcher.call runs in a task"
            inline = _Inline(task)
            self._watch(deadline, (inline,))
            cancelling = task.cancelling()
            self._running += 1
            started = time.perf_counter()
            try:
                with tracing.batch([tracing.link()], len(values)):
                    outputs = await self._run_batch(values)
            except asyncio.CancelledError:
                # The deadline timer's cancel (as asyncio.timeout tells its own from another's).
                if inline.expired and task.uncancel() <= cancelling:
                    raise DeadlineExceeded("the deadline passed while predict ran") from None
                raise
            finally:
                inline.finished = True
                self._running -= 1
                self._ended(len(values), 1, started)
                if self._queue:  # only then may the loop be waiting for this slot
                    self._poke()
            if inline.expired:  # predict swallowed the timer's cancel: not one to pass on
                task.uncancel()
            return outputs
        futures = self.submit(values, deadline)
        self._watch(deadline, futures)
        try:
            return list(await asyncio.gather(*futures)) if len(futures) > 1 else [await futures[0]]
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def submit(self, values: list[Any], deadline: float) -> list[asyncio.Future[Any]]:
        """Queue `values` (all or none) and return one future per value; `deadline` is `time.monotonic()` based."""
        if len(self._queue) + len(values) > self.max_queue:
            raise QueueFull(f"{len(self._queue)} inputs queued (max {self.max_queue})")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        link = tracing.link()
        futures = []
        for i, value in enumerate(values):
            fut: asyncio.Future[Any] = loop.create_future()
            self._queue.append(_Item(value, fut, now, deadline, link, i == 0))
            futures.append(fut)
        if self._want is not None and len(self._queue) >= self._want:
            self._poke()
        return futures

    def _watch(self, deadline: float, waiters: Sequence[_Waiter]) -> None:
        """Have the deadline timer fail `waiters` at `deadline` unless done by then (rule 8)."""
        heapq.heappush(self._deadlines, (deadline, next(self._order), waiters))
        if self._timer is None or deadline < self._timer_at:
            self._arm()

    def _arm(self) -> None:
        """(Re)set the deadline timer for the earliest deadline, or SWEEP_S from now if sooner."""
        if self._timer is not None:
            self._timer.cancel()
        now = time.monotonic()
        self._timer_at = min(self._deadlines[0][0], now + SWEEP_S)
        self._timer = asyncio.get_running_loop().call_later(max(0.0, self._timer_at - now), self._expire)

    def _expire(self) -> None:
        """Fail the callers whose deadline passed; forget the answered ones at the front."""
        self._timer = None
        now = time.monotonic()
        heap = self._deadlines
        while heap and (heap[0][0] <= now or all(waiter.done() for waiter in heap[0][2])):
            _, _, waiters = heapq.heappop(heap)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(DeadlineExceeded("the deadline passed before predict answered"))
        if heap:
            self._arm()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _sleep_until_poked(self, timeout_s: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, self._poke)
        try:
            await self._wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    async def run(self) -> None:
        """The batch loop; runs until cancelled (then lets running batches finish)."""
        try:
            while True:
                waited = False
                # Both at once: while the loop waits for an input, an inline call (rule 7) may take the slot.
                while not self._queue or self._running >= self.max_concurrency:
                    waited = waited or not self._queue
                    self._want = None if self._queue else 1
                    await self._sleep_until_poked()
                if self.max_batch_size > 1:
                    idle = waited and self._running == 0
                    # Idle, a batch goes at once, or waits for as many inputs as the last one had (rule 3).
                    target = (self._last_size if self._company_due() else 0) if idle else self.max_batch_size
                    until = self._queue[0].arrived + self.batch_wait_s
                    self._want = target
                    while len(self._queue) < target:
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        await self._sleep_until_poked(left)
                batch = self._take()
                if batch:
                    self._running += 1
                    task = asyncio.get_running_loop().create_task(self._run(batch))
                    self._batches.add(task)
                    task.add_done_callback(self._batches.discard)
        finally:
            if self._batches:
                await asyncio.gather(*self._batches, return_exceptions=True)

    def _company_due(self) -> bool:
        """Whether the last batch's callers are due back: it had several (rule 3)."""
        return self._last_callers > 1

    def _ended(self, size: int, callers: int, started: float) -> None:
        """Book-keeping for a batch of `size` inputs from `callers` requests whose predict began at
        `started` (perf_counter) and just ended."""
        self._last_size, self._last_callers = size, callers
        if self.on_batch is not None:
            with contextlib.suppress(Exception):
                self.on_batch(size, time.perf_counter() - started)

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():  # the caller gave up
                continue
            if item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("the deadline passed while queued"))
                continue
            batch.append(item)
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            with tracing.batch((item.link for item in batch), len(batch)):
                outputs = await self._run_batch([item.value for item in batch])
        except BaseException as exc:  # a CancelledError too (shutdown): no caller may wait forever
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
        else:
            for item, out in zip(batch, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(out)
        finally:
            self._running -= 1
            self._ended(len(batch), sum(item.first for item in batch), started)
            self._poke()
