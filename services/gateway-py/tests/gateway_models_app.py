"""The model the gateway's proxy tests call: `echo` answers each input with the pid of the replica that
served it, so a test can tell the replicas apart. With $ECHO_LOAD_GATE set, load() waits until that
file exists: a replica that stays loading (answering 503) for as long as a test needs one."""

from __future__ import annotations

import os
import time
from typing import Any

from neutrino import App

app = App("gateway-model-tests")


@app.model(name="echo")
class Echo:
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}, {"name": "pid", "datatype": "INT64", "shape": [-1]}]

    def load(self) -> None:
        gate = os.environ.get("ECHO_LOAD_GATE")
        while gate and not os.path.exists(gate):
            time.sleep(0.01)
        self.pid = os.getpid()

    def predict(self, x: Any) -> dict[str, Any]:
        return {"x": x, "pid": self.pid}
