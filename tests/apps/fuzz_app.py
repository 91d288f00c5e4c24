"""Tasks for the property-based API test: typed parameters of several shapes, all fast and side-effect free
(the fuzzer calls them with arbitrary arguments)."""

from __future__ import annotations

from typing import Annotated, Literal

from neutrino import App
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

app = App("fuzz")


class Point(TypedDict):
    x: float
    y: float


@app.task()
def add(x: int, y: int) -> int:
    return x + y


@app.task()
def total(values: list[int], start: int = 0) -> int:
    return sum(values, start)


@app.task()
def norm(point: Point, scale: float = 1.0) -> float:
    return scale * (point["x"] ** 2 + point["y"] ** 2) ** 0.5


@app.task()
def shout(word: Annotated[str, Field(max_length=20)], mode: Literal["upper", "lower"] = "upper") -> str:
    return word.upper() if mode == "upper" else word.lower()


@app.task()
def maybe(text: str | None = None, flag: bool = False) -> dict[str, object]:
    return {"text": text, "flag": flag}


@app.task()
def fail(message: str = "boom") -> None:
    raise ValueError(message)
