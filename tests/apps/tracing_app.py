"""The trace tests' app (tests/test_tracing.py): a task that calls a model, served from this same app
by a real model server, and a task that reports which OpenTelemetry modules its worker imported."""

from __future__ import annotations

import sys

from neutrino import App

app = App("tracing-tests")


@app.model(name="double", max_batch_size=8, batch_wait_ms=1)
class Double:
    """Doubles each number: a model with no weights, batched like any other."""

    def load(self) -> None:
        pass

    def predict(self, xs: list[float]) -> list[float]:
        return [2 * x for x in xs]


@app.task()
def doubled(x: float) -> float:
    """`x` doubled by the `double` model (its replicas from NEUTRINO_MODEL_DOUBLE_URL)."""
    result: float = app.models.double.predict(x)
    return result


@app.task()
def otel_modules() -> list[str]:
    """The OpenTelemetry modules loaded in the worker that runs this."""
    return sorted(name for name in sys.modules if name.startswith("opentelemetry"))
