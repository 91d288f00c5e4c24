"""The app of tests/test_model_front_door.py: a model, `echo`, that answers each input with the pid of
the replica that served it (so a test can tell which replica answered), and two tasks that call it
through the SDK's model client, one blocking and one async."""

from __future__ import annotations

import os
from typing import Any

from neutrino import App

app = App("front-door-tests")


@app.model(name="echo")
class Echo:
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}, {"name": "pid", "datatype": "INT64", "shape": [-1]}]

    def load(self) -> None:
        self.pid = os.getpid()

    def predict(self, x: Any) -> dict[str, Any]:
        return {"x": x, "pid": self.pid}


@app.task()
def ask(x: int) -> Any:
    """The echo model's answer for x, from a blocking task."""
    return app.models.echo.predict(x)


@app.task()
async def ask_async(x: int) -> Any:
    """The echo model's answer for x, from an async task."""
    return await app.models.echo.predict(x)
