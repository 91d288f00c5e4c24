"""Fixtures for the model server's component tests: real server processes, stopped by pid at teardown."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from neutrino_model_server.testing import ServerProcess, model_replicas, start_model_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TEST_APP = "model_server_app:app"
DIGITS_APP = "examples.models.app:app"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so tests can import the example app, as the server processes do


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """`serve(model, *flags, app=TEST_APP, env=None)` -> a started (not yet ready) server process."""
    started: list[ServerProcess] = []

    def _serve(model: str, *flags: str, app: str = TEST_APP, env: dict[str, str] | None = None) -> ServerProcess:
        server = start_model_server(app, model, *flags, app_dir=HERE, cwd=ROOT, env=env)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def digits_replicas() -> Iterator[list[ServerProcess]]:
    """Two replicas of the example app's `digits` model, ready."""
    with model_replicas(DIGITS_APP, "digits", 2, cwd=ROOT) as servers:
        yield servers
