"""An app for `neutrino dev` end-to-end tests: a model with no heavy imports, a task that calls it
(with retries, so a lost task pod costs no run), and a plain task whose answer a test edits to
see `--reload` pick it up."""

from __future__ import annotations

import time

from neutrino import App

app = App()

VERSION = "v1"


@app.model(name="doubler", max_batch_size=8, batch_wait_ms=1)
class Doubler:
    example = 21

    def load(self) -> None:
        self.factor = 2

    def predict(self, xs: list[int]) -> list[int]:
        return [self.factor * x for x in xs]


@app.task(retries=3, retry_backoff_s=0.05)
def double(x: int, delay_s: float = 0.0) -> int:
    """Twice x, computed by the `doubler` model; `delay_s` keeps a worker busy first."""
    time.sleep(delay_s)
    result: int = app.models.doubler.predict(x)
    return result


@app.task()
def version() -> str:
    return VERSION
