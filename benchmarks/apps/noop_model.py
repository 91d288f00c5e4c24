"""A no-op model for benchmarks/models.py: predict returns its input (async, so no thread hop)."""

from __future__ import annotations

from typing import Any

from neutrino import App

app = App("bench-models")


@app.model(name="noop")
class Noop:
    def load(self) -> None:
        pass

    async def predict(self, x: Any) -> Any:
        return x
