"""Test app whose catalog cannot be built: the zygote must still serve, with an empty catalog."""

from __future__ import annotations

from typing import Any

from neutrino import App


class BrokenCatalogApp(App):
    def catalog(self) -> dict[str, dict[str, Any]]:
        raise RuntimeError("no schemas today")


app = BrokenCatalogApp("bad-catalog")


@app.task()
def add(x: int, y: int) -> int:
    return x + y
