"""Fixtures for the SDK tests: a stand-in orchestrator (tests/sdk_peer.py) and clients connected to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from neutrino import Client
from sdk_peer import Peer


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer("tcp://")
    yield p
    p.stop()


@pytest.fixture
def client(peer: Peer) -> Iterator[Client]:
    with Client(peer.address, timeout_s=30) as c:
        yield c
