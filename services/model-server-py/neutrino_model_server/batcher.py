"""Adaptive batching: a bounded queue of inputs and the loop that turns it into `predict` calls.

Rules (each one a test in tests/test_batcher.py):

1. An input joins the queue only if fewer than `max_queue` wait; otherwise `submit` raises
   `QueueFull` at once (the API answers 429 with Retry-After).
2. The loop starts a batch when a predict slot is free (at most `max_concurrency` run at once).
   Its first input is the oldest queued one.
3. Idle: if the loop had to wait for that input and no batch is running, the batch goes at once
   with whatever is queued by then, so a lone request is never delayed by the wait window.
4. Otherwise the batch waits for more inputs until it holds `max_batch_size` or `batch_wait_s`
   has passed since its first input arrived. While predict is busy inputs pile up, so under load
   batches fill without waiting at all.
5. An input whose caller gave up (future cancelled) or whose deadline passed is dropped when the
   batch is formed; the latter's caller gets `DeadlineExceeded`.
6. If `run_batch` raises, every input of that batch gets the exception.
7. Inline: when nothing is queued and a predict slot is free (for a batching model: when no batch
   is running at all, as in rule 3), `call` runs the request's inputs as a batch on the caller's
   own task, skipping the loop's wake-up, its task and a future per input (about a third of a
   no-op request's time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("neutrino.model_server")


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
        self._running = 0
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def call(self, values: list[Any], deadline: float) -> list[Any]:
        """The outputs for `values`: run at once when idle (rule 7), else queued (rules 1-6)."""
        free = self.max_concurrency if self.max_batch_size == 1 else 1
        if not self._queue and self._running < free and len(values) <= self.max_batch_size:
            self._running += 1
            started = time.perf_counter()
            try:
                return await self._run_batch(values)
            finally:
                self._running -= 1
                if self.on_batch is not None:
                    with contextlib.suppress(Exception):
                        self.on_batch(len(values), time.perf_counter() - started)
                if self._queue:  # only then may the loop be waiting for this slot
                    self._poke()
        futures = self.submit(values, deadline)
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
        futures = []
        for value in values:
            fut: asyncio.Future[Any] = loop.create_future()
            self._queue.append(_Item(value, fut, now, deadline))
            futures.append(fut)
        self._poke()
        return futures

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
                while self._running >= self.max_concurrency:
                    await self._sleep_until_poked()
                waited = False
                while not self._queue:
                    waited = True
                    await self._sleep_until_poked()
                if self.max_batch_size > 1 and not (waited and self._running == 0):
                    until = self._queue[0].arrived + self.batch_wait_s
                    while len(self._queue) < self.max_batch_size:
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
            if self.on_batch is not None:
                with contextlib.suppress(Exception):
                    self.on_batch(len(batch), time.perf_counter() - started)
            self._poke()
