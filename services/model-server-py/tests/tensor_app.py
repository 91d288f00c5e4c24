"""Models for the binary-tensor and typed-input tests. Served with
`--app-dir services/model-server-py/tests --app tensor_app:app`.

`$TENSOR_GATE`, when set, names a file: a batch waits in predict until the test creates it, so
that concurrent requests queue up and are batched together, whatever the machine's load.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import numpy as np
from neutrino import App
from neutrino_model_server.v2 import DTYPES
from pydantic import BaseModel, Field

app = App("tensor-tests")

# The numeric datatypes as numpy dtypes: the server's own table, less BYTES (returned as it came).
NUMERIC = {name: t for name, t in DTYPES.items() if name != "BYTES"}


def _wait_for_gate() -> None:
    gate = os.environ.get("TENSOR_GATE")
    while gate and not os.path.exists(gate):
        time.sleep(0.005)


@app.model(name="tensors", max_batch_size=16, batch_wait_ms=20, max_concurrency=1)
class Tensors:
    """Three inputs, three outputs: x (FP32 [-1, 4]) doubled, n (INT64) plus one, s (BYTES) upper-cased;
    each output also says how many rows its batch held."""

    inputs = [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "n", "datatype": "INT64", "shape": [-1]},
        {"name": "s", "datatype": "BYTES", "shape": [-1]},
    ]
    outputs = [
        {"name": "doubled", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "next", "datatype": "INT64", "shape": [-1]},
        {"name": "upper", "datatype": "BYTES", "shape": [-1]},
        {"name": "batch", "datatype": "INT32", "shape": [-1]},
    ]

    def load(self) -> None:
        pass

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        _wait_for_gate()
        return [
            {
                "doubled": [2 * v for v in row["x"]],
                "next": row["n"] + 1,
                "upper": row["s"].upper(),  # str: the test sends UTF-8 text
                "batch": len(rows),
            }
            for row in rows
        ]


@app.model(name="cast", max_batch_size=8, batch_wait_ms=1)
class Cast:
    """Returns input `x` as a numpy array of the datatype named by input `to`: any datatype round trip."""

    def load(self) -> None:
        pass

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            to = row["to"]
            out.append({"y": np.asarray(row["x"], dtype=NUMERIC[to]) if to in NUMERIC else row["x"]})
        return out


class Point(BaseModel):
    x: float
    y: Annotated[float, Field(ge=0)]


@app.model(name="points", max_batch_size=16, batch_wait_ms=20, max_concurrency=1)
class Points:
    """Typed by `validate`'s hint (a pydantic model); predict gets `Point`s and answers each one's
    sum and its batch's size."""

    def load(self) -> None:
        pass

    def validate(self, p: Point) -> None:
        if p.x == 13:
            raise ValueError("x must not be 13")

    def predict(self, points: list[Point]) -> list[dict[str, float]]:
        assert all(isinstance(p, Point) for p in points), points  # the validated values, not the JSON
        _wait_for_gate()
        return [{"sum": p.x + p.y, "batch": len(points)} for p in points]


Pixels = Annotated[list[Annotated[float, Field(ge=0, le=16)]], Field(min_length=4, max_length=4)]


@app.model(name="scores", max_batch_size=16, batch_wait_ms=20, max_concurrency=1)
class Scores:
    """Typed by predict's hints alone (no `inputs`/`outputs`: the V2 metadata comes from them)."""

    def load(self) -> None:
        pass

    def predict(self, images: list[Pixels]) -> list[float]:
        _wait_for_gate()
        return [sum(image) for image in images]
