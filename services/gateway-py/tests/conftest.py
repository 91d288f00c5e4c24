"""Fixtures for the gateway's tests that start real processes: model replicas, task pods, gateways.

The gateway, orchestrator and HTTP helpers are the cross-service tests' own (tests/gateway_harness.py,
tests/conftest.py), imported from the repository root; every process is stopped by pid at teardown.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from neutrino_model_server.testing import ServerProcess, model_replicas

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the `tests` package (harness) and the example apps, as the processes see them

from tests.gateway_harness import Gateway, start_gateway  # noqa: E402

ECHO_APP = "gateway_models_app:app"  # in this folder (--app-dir)
DIGITS_APP = "examples.models.app:app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_url() -> str:
    """A URL nothing listens on: connections to it are refused."""
    return f"http://127.0.0.1:{free_port()}"


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
