"""`--request-deadline` for every request in flight, with one timer (`Deadlines`)."""

from __future__ import annotations

import asyncio
from typing import Any


class Deadlines:
    """`--request-deadline` for every request in flight, with one timer for all of them: what
    asyncio.timeout does per request (an object, a timer made and cancelled, two coroutine calls)
    for the cost of a dict entry. Every request has the same deadline from when it starts, so the
    requests in the order they started are in the order their deadlines pass, and only the
    first one needs a timer.

    `start()` in the request's task, `end(task)` in a `finally`; a request past its deadline is
    cancelled as asyncio.timeout would, and `passed(task)` tells that CancelledError from others."""

    __slots__ = ("_expired", "_running", "_seconds", "_timer")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._running: dict[asyncio.Task[Any], float] = {}  # in start order, so in deadline order
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        deadline = loop.time() + self._seconds
        self._running[task] = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)
        return task

    def end(self, task: asyncio.Task[Any]) -> None:
        self._running.pop(task, None)
        if self._expired:
            self._expired.discard(task)

    def passed(self, task: asyncio.Task[Any]) -> bool:
        """Whether the CancelledError `task` is handling is its deadline's, and only its (asyncio.timeout's rule)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._running:
            task, deadline = next(iter(self._running.items()))  # the oldest: the first to pass
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire, loop)
                return
            del self._running[task]
            if not task.done():
                self._expired.add(task)
                task.cancel()
