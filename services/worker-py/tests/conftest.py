"""Fixtures for the worker tests: a private run dir and the fake orchestrator around a real zygote."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_harness import FakeOrchestrator


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # mkdtemp makes a 0700 directory; /tmp keeps the socket paths well under the 107-byte limit
    # that pytest's deep tmp_path can exceed.
    path = Path(tempfile.mkdtemp(prefix="ntw-"))
    assert path.stat().st_mode & 0o777 == 0o700
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def orchestrator(run_dir: Path) -> Iterator[FakeOrchestrator]:
    orch = FakeOrchestrator(run_dir)
    yield orch
    orch.close()
