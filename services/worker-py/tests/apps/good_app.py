"""Test app for the zygote component tests: one task per behaviour the tests check."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time

from neutrino import App, Retry

app = App("good")


@app.task()
def add(x: int, y: int) -> int:
    return x + y


@app.task()
async def greet(name: str) -> str:
    await asyncio.sleep(0)
    return f"Hello, {name}!"


@app.task()
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@app.task()
def die(code: int) -> None:
    os._exit(code)


@app.task()
def exit_with(code: int | str | None) -> None:
    sys.exit(code)


@app.task()
def unserializable() -> object:
    return {1, 2}


@app.task()
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task()
def gc_enabled() -> bool:
    return gc.isenabled()


@app.task()
def noop() -> None:
    pass


@app.task()
def spin(seconds: float) -> int:
    """Pure-Python CPU work that never releases the GIL by itself (the heartbeat test's load)."""
    deadline = time.monotonic() + seconds
    loops = 0
    while time.monotonic() < deadline:
        loops += 1
    return loops


@app.task(retries=3)
def retry_later(delay: float | None = None, message: str = "") -> None:
    raise Retry(delay=delay, message=message)


@app.task(timeout=5, retries=2, retry_on=(ConnectionError, TimeoutError), retry_backoff_s=0.5, retry_backoff_max_s=10)
def flaky(error: str) -> None:
    raise {"connection": ConnectionError, "value": ValueError}[error](f"{error} trouble")
