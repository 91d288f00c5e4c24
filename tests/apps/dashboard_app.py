"""The dashboard tests' app: a batched model with no heavy imports, a task that calls it, a task that
fails with a message the test looks for, and one that holds a worker busy."""

from __future__ import annotations

import time

from neutrino import App

app = App("dashboard-tests")


@app.model(name="doubler", max_batch_size=8, batch_wait_ms=2)
class Doubler:
    def load(self) -> None:
        self.factor = 2

    def predict(self, xs: list[int]) -> list[int]:
        return [self.factor * x for x in xs]


@app.task()
def double(x: int) -> int:
    """Twice x, from the `doubler` model."""
    result: int = app.models.doubler.predict(x)
    return result


@app.task()
def fail(message: str) -> None:
    raise ValueError(message)


@app.task()
def hold(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
