"""Fixtures for the gateway's tests that start real processes: model replicas, task pods, gateways.

The gateway, orchestrator and HTTP helpers are the cross-service tests' own (tests/gateway_harness.py,
tests/conftest.py), imported from the repository root; every process is stopped by pid at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gateway_support import DIGITS_APP, ROOT, free_port  # also puts the repository root on sys.path
from neutrino_model_server.testing import ServerProcess, model_replicas

from tests.gateway_harness import Gateway, start_gateway


@pytest.fixture(scope="session")
def digits() -> Iterator[ServerProcess]:
    """One ready replica of the example app's `digits` model (its load trains for a few seconds: shared)."""
    with model_replicas(DIGITS_APP, "digits", 1, cwd=ROOT) as servers:
        yield servers[0]


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`gateways(*flags, orchestrators=None, env=None)` -> a started gateway, stopped at teardown. Without
    orchestrators it points at a port nothing listens on: model routes need no task pod."""
    started: list[Gateway] = []

    def _start(*flags: str, orchestrators: list[str] | None = None, env: dict[str, str] | None = None) -> Gateway:
        pods = orchestrators or [f"tcp://127.0.0.1:{free_port()}"]
        db = tmp_path / f"runs-{len(started)}.db"
        gw = start_gateway(pods, db, *flags, wait_ready=orchestrators is not None, env=env)
        started.append(gw)
        return gw

    yield _start
    for gw in started:
        gw.stop()
