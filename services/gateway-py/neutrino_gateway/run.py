"""The record of one run: what to call, where it stands, how it ended. store.py persists the fields
above the line marked "Not stored"; runs.py owns the rest and every change of status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from neutrino import _tracing

FINISHED = ("succeeded", "failed", "cancelled")


class Done:
    """Set once the run's outcome is on disk, as an asyncio.Event would be. `wait` has a time limit
    that costs one timer: asyncio.timeout around Event.wait adds a context manager object and its
    two coroutines to every HTTP request that waits for its run."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for `set()`; True when it was set."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout_s, _time_up, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if not self._set:
                self._waiters.remove(waiter)
        return self._set


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(slots=True, eq=False)
class Run:
    """One run: what to call, where it stands, and how it ended."""

    id: str
    task: str
    payload: bytes  # msgpack [args, kwargs], as sent to the orchestrator
    timeout_s: float | None
    retries: int | None
    created_at: float
    expires_at: float
    idempotency_key: str | None = None
    status: str = "queued"
    result: bytes | None = None  # msgpack of the return value, as the worker sent it
    error: dict[str, Any] | None = None  # {"type", "message", "kind", "traceback"?}
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    traceparent: str | None = None  # W3C: the run's place in its trace (tracing.py)
    # Not stored (Runs' own): where the run is now, and who waits for it.
    tracestate: str | None = None  # sent with each dispatch; after a restart, rebuilt from the run id
    sent_ns: int = 0  # wall clock of the last dispatch, with tracing on: where its queue-wait span starts
    pod: str | None = None
    wire_id: int | None = None
    dispatches: int = 0
    tried: frozenset[str] = frozenset()  # pods that refused it since its last dispatch
    requeues: int = 0
    http_waiting: int = 0  # POSTs waiting on it now (while nobody has its id, a refusal can become a 429)
    seen: bool = False  # some caller has been given its id: it must never vanish
    finishing: bool = False  # its outcome is staged but not on disk yet: nobody is told until it is
    finish_failed: bool = False  # writing that outcome failed at least once (logged once)
    rejected: bool = False  # every pod refused it while only POSTs waited on it: they answer 429
    unwritten: bool = False  # its first write (its insert, or a sync run's outcome) not made yet: its id not given out
    stored: bool = True  # its row is on disk or staged; False: a sync POST's run, written with its outcome (runs.py)
    write_error: BaseException | None = None  # that write failed: nothing was accepted (the POSTs' 503)
    done: Done = field(default_factory=Done)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def trace_id(self) -> str | None:
        return _tracing.trace_id_of(self.traceparent)
