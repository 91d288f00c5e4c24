"""Quickstart app: a handful of tasks that show what Neutrino runs (and what the tests and benchmarks call).

Served as module `examples.quickstart.app` from the repository root, or as `app` with
`--app-dir examples/quickstart`.
"""

from __future__ import annotations

import asyncio
import time

from neutrino import App

app = App("quickstart")


@app.task()
def add(x: int, y: int) -> int:
    return x + y


@app.task()
def noop() -> None:
    """Does nothing: the benchmark task that measures pure dispatch overhead."""


@app.task()
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task()
def cpu(n: int) -> int:
    """Burn CPU in pure Python: the sum of i*i for i below n."""
    total = 0
    for i in range(n):
        total += i * i
    return total


@app.task()
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@app.task()
async def greet(name: str) -> str:
    await asyncio.sleep(0)
    return f"Hello, {name}!"


@app.task()
def echo(data: bytes) -> bytes:
    return data
