"""Models for the model server's tests: a gated slow load, a failing load, and a batched echo with
validation and a poison input. Served with `--app-dir services/model-server-py/tests --app model_server_app:app`."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from neutrino import App

app = App("model-server-tests")


@app.model(name="slow")
class Slow:
    """load() blocks until the file named by $SLOW_LOAD_GATE exists (the test creates it)."""

    def load(self) -> None:
        gate = os.environ["SLOW_LOAD_GATE"]
        while not os.path.exists(gate):
            time.sleep(0.01)

    def predict(self, x: Any) -> Any:
        return x


@app.model(name="broken")
class Broken:
    def load(self) -> None:
        raise RuntimeError("weights file is corrupt (on purpose)")

    def predict(self, x: Any) -> Any:
        return x


@app.model(name="echo", max_batch_size=16, batch_wait_ms=20, max_concurrency=1)
class Echo:
    """Batched: returns each input; a batch holding "boom" raises, "short" answers one output too few,
    "slow" takes 0.5 s; `validate` refuses dicts."""

    async def load(self) -> None:
        await asyncio.sleep(0)

    def validate(self, x: Any) -> None:
        if isinstance(x, dict):
            raise ValueError("echo takes no objects")

    def predict(self, xs: list[Any]) -> list[Any]:
        if "boom" in xs:
            raise ValueError("boom in the batch")
        if "short" in xs:
            return xs[:-1]
        if "slow" in xs:
            time.sleep(0.5)
        time.sleep(0.005)  # long enough that concurrent requests pile up behind a running batch
        return xs


@app.model(name="noop")
class Noop:
    def load(self) -> None:
        pass

    async def predict(self, x: Any) -> Any:
        return x
