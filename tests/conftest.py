"""End-to-end fixtures: the real orchestrator binary, real zygote and workers, real sockets.

Every orchestrator a test starts is stopped (SIGTERM, then SIGKILL) by PID at teardown.
Readiness is the orchestrator's own "Orchestrator ready" log line, never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "neutrino-orchestrator"
QUICKSTART = "examples.quickstart.app:app"


@dataclass(kw_only=True)
class ProcessLog:
    """A process whose stderr a daemon thread reads into `lines`, for tests to wait on."""

    proc: subprocess.Popen[str]
    stream: IO[str] | None = None  # what to read; the process's stderr when None
    lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _reading: bool = True

    def follow(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Block until a log line matches `pattern` (or the process exits)."""
        rx = re.compile(pattern)
        name = type(self).__name__.lower()
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._reading:
                    raise AssertionError(f"{name} exited ({self.proc.returncode}) before {pattern!r}:\n{self.log}")
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise AssertionError(f"no {name} log line matching {pattern!r} within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:
        stream = self.stream or self.proc.stderr
        assert stream is not None
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._reading = False
            self._cond.notify_all()


@dataclass(kw_only=True)
class Orchestrator(ProcessLog):
    address: str
    run_dir: Path

    def pids(self) -> list[int]:
        """Zygote and worker pids, as the orchestrator logged them."""
        return [int(p) for p in re.findall(r"pid=(\d+)", self.log)]

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (then SIGKILL) by pid, and remove the test's temp dir; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return code


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the process under test binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str) -> bool:
    """Whether `url` answers 200 now: a readiness probe to poll with `wait_until`."""
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll a readiness probe (e.g. `client.ping()`) until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")


def start_orchestrator(
    *args: str,
    workers: int | None = 2,
    app: str = QUICKSTART,
    wait_ready: bool = True,
    grace_period_s: float = 10.0,
    env: dict[str, str] | None = None,
) -> Orchestrator:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make setup` (cargo build --release) first")
    # Short paths: ipc socket paths must stay under 107 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="nt-", dir="/tmp"))
    address = f"ipc://{run_dir}/frontend.sock"
    cmd = [
        str(BINARY),
        "--app",
        app,
        *(["--workers", str(workers)] if workers is not None else []),
        "--frontend",
        address,
        "--run-dir",
        str(run_dir / "run"),
        "--python",
        sys.executable,
        "--grace-period",
        str(grace_period_s),
        *args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})}
    )
    orch = Orchestrator(proc=proc, address=address, run_dir=run_dir)
    orch.follow()
    if wait_ready:
        orch.wait_for(r"Orchestrator ready with \d+ worker")
    return orch


@pytest.fixture
def raw():  # type: ignore[no-untyped-def]
    """`raw(address)` -> a bare DEALER speaking frames directly (closed at teardown)."""
    import zmq

    sockets = []

    def _connect(address: str):  # type: ignore[no-untyped-def]
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(address)
        sockets.append(sock)
        return sock

    yield _connect
    for sock in sockets:
        sock.close()


@pytest.fixture
def orchestrators() -> Iterator[list[Orchestrator]]:
    started: list[Orchestrator] = []
    yield started
    for orch in started:
        orch.stop()


@pytest.fixture
def start(orchestrators: list[Orchestrator]):  # type: ignore[no-untyped-def]
    """`start(*flags, workers=2, app=...)` -> a ready Orchestrator, stopped at teardown."""

    def _start(*args: str, **kwargs) -> Orchestrator:  # type: ignore[no-untyped-def]
        orch = start_orchestrator(*args, **kwargs)
        orchestrators.append(orch)
        return orch

    return _start
