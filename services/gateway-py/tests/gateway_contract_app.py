"""The app the gateway's API-contract tests run: parameters whose schemas need `$defs` (a list of
TypedDicts, a pydantic model), optional, `Literal`, length-constrained and `bytes` ones."""

from __future__ import annotations

from typing import Annotated, Literal

from neutrino import App
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

app = App("gateway-contract-tests")


class Item(TypedDict):
    name: Annotated[str, Field(min_length=1, max_length=10)]
    qty: int
    note: str | None


class Address(BaseModel):
    city: str
    lines: list[str] = []


@app.task()
def order(items: list[Item], mode: Literal["fast", "slow"] = "fast", blob: bytes | None = None) -> int:
    """How many items: fails with TypeError when `items` is not a list. (Not the sum of their `qty`:
    that of two 64-bit integers may not fit in one, and msgpack carries no wider.)"""
    return len(items)


@app.task()
def ship(to: Address, items: list[Item] | None = None) -> str:
    return to.city if isinstance(to, Address) else str(to["city"])


@app.task()
def sleep(seconds: float) -> float:
    return seconds
