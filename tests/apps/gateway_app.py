"""The gateway tests' app: typed parameters for validation, side effects to count runs, slow and failing tasks."""

from __future__ import annotations

import os
import time
from typing import Annotated, Literal

from neutrino import App
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

app = App("gateway-tests")


class Point(TypedDict):
    x: float
    y: float


@app.task()
def add(x: int, y: int) -> int:
    """Add two integers."""
    return x + y


@app.task()
def norm(point: Point, scale: float = 1.0) -> float:
    """The length of a point's vector, scaled."""
    return scale * (point["x"] ** 2 + point["y"] ** 2) ** 0.5


@app.task()
def shout(word: Annotated[str, Field(min_length=1, max_length=20)], mode: Literal["upper", "lower"] = "upper") -> str:
    return word.upper() if mode == "upper" else word.lower()


@app.task()
def record(path: str, token: str) -> int:
    """Append `token` to the file at `path` (one line per run): lets a test count how often a run ran."""
    with open(path, "a") as f:
        f.write(token + "\n")
    return os.getpid()


@app.task()
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task()
def record_then_sleep(path: str, token: str, seconds: float) -> str:
    with open(path, "a") as f:
        f.write(token + "\n")
    time.sleep(seconds)
    return token


@app.task()
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@app.task()
def echo(data: bytes) -> bytes:
    return data


@app.task()
def noop() -> None:
    """Does nothing: the benchmark task."""
