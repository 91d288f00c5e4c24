"""Test app for the zygote component tests: one task per behaviour the tests check."""

from __future__ import annotations

import asyncio
import gc
import os
import time

from neutrino import App

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
