"""Tasks for the limits tests: results of a chosen size, and a quick one to show the worker still serves."""

import time

from neutrino import App

app = App("limits")


@app.task()
def blob(n: int) -> bytes:
    """n bytes of b"x"."""
    return b"x" * n


@app.task()
def add(x: int, y: int) -> int:
    return x + y


@app.task()
def echo_text(text: str) -> str:
    return text


@app.task()
def slow_echo(text: str, seconds: float) -> str:
    time.sleep(seconds)
    return text
