"""Models for the gRPC tests (test_grpc.py): tensors of three datatypes, batched and not, a refused
input, a failing batch, a gated predict and a gated load. Served with
`--app-dir services/model-server-py/tests --app grpc_app:app`."""

from __future__ import annotations

import os
import time
from typing import Any

from neutrino import App

app = App("model-server-grpc-tests")

# A row is {"f32": [...], "i64": [...], "text": str | bytes}, one per request row; each output
# tensor is declared, so it comes back in the datatype it was sent in.
OUTPUTS = [
    {"name": "f32", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "i64", "datatype": "INT64", "shape": [-1, -1]},
    {"name": "text", "datatype": "BYTES", "shape": [-1]},
]


def _wait_for(path_env: str) -> None:
    gate = os.environ[path_env]
    while not os.path.exists(gate):
        time.sleep(0.01)


class Echo:
    """Answers each row as it came. `validate` refuses a row whose text is "bad"; a row whose text is
    "boom" fails its whole batch; "wait" holds predict until the file $PREDICT_GATE exists."""

    outputs = OUTPUTS

    def load(self) -> None:
        pass

    def validate(self, row: Any) -> None:
        if isinstance(row, dict) and row.get("text") == "bad":
            raise ValueError("text 'bad' is refused (on purpose)")

    def _check(self, rows: list[Any]) -> None:
        texts = [row.get("text") if isinstance(row, dict) else row for row in rows]
        if "boom" in texts:
            raise RuntimeError("boom in the batch (on purpose)")
        if "wait" in texts:
            _wait_for("PREDICT_GATE")


class BatchedEcho(Echo):
    def predict(self, rows: list[Any]) -> list[Any]:
        self._check(rows)
        time.sleep(0.005)  # long enough that concurrent requests pile up behind a running batch
        return rows


class SingleEcho(Echo):
    def predict(self, row: Any) -> Any:
        self._check([row])
        return row


class GatedLoad:
    """load() blocks until the file $LOAD_GATE exists."""

    def load(self) -> None:
        _wait_for("LOAD_GATE")

    def predict(self, x: Any) -> Any:
        return x


app.add_model(BatchedEcho, name="batched", max_batch_size=16, batch_wait_ms=50)
app.add_model(SingleEcho, name="single")
app.add_model(GatedLoad, name="gated-load")
