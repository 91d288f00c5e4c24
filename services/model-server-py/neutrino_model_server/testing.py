"""Test helpers: start a real model server process on a free port and wait for its readiness signal.

    with start_model_server("examples.models.app:app", "digits") as server:
        server.wait_ready()
        ... server.url ...   (with --grpc-port 0: server.wait_grpc() is its host:port)

    with model_replicas("examples.models.app:app", "digits", 2) as servers:  # both ready
        ...

The process is stopped by pid (SIGTERM, then SIGKILL) when the block ends. Readiness is the
server's own "listening on" log line and then `GET /v2/health/ready` answering 200, never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reading = True
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._reading = False
            self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 30.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                if not self._reading:
                    raise AssertionError(f"model server exited ({self.proc.poll()}) before {pattern!r}:\n{self.log}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no log line matching {pattern!r} within {timeout_s}s:\n{''.join(self.lines)}"
                    )
                self._cond.wait(left)

    def wait_listening(self, timeout_s: float = 30.0) -> str:
        self.url = self.wait_for(r"listening on (http://[^\s\"]+)", timeout_s).group(1)
        return self.url

    def wait_grpc(self, timeout_s: float = 30.0) -> str:
        """The gRPC address (host:port) of a server started with --grpc-port, once it listens."""
        return self.wait_for(r"gRPC listening on (\S+)", timeout_s).group(1)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> str:
        """The base URL, once the server answers ready (its "ready" log line, then the endpoint)."""
        if not self.url:
            self.wait_listening(timeout_s)
        self.wait_for(r"model '.*' ready", timeout_s)
        if not self.ready():
            raise AssertionError(f"logged ready but /v2/health/ready says no:\n{self.log}")
        return self.url

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_model_server(
    app: str,
    model: str,
    *args: str,
    app_dir: str | Path | None = None,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> ServerProcess:
    """Start `python -m neutrino_model_server` on port 0 (a free port); the caller waits for readiness."""
    cmd = [python, "-m", "neutrino_model_server", "--app", app, "--model", model, "--port", "0", *args]
    if app_dir is not None:
        cmd += ["--app-dir", str(app_dir)]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return ServerProcess(proc)


@contextlib.contextmanager
def model_replicas(app: str, model: str, count: int, *args: str, **kwargs: Any) -> Iterator[list[ServerProcess]]:
    """`count` replicas of one model, all ready (started together, so their loads overlap); stopped at the end.
    `args` and `kwargs` go to start_model_server."""
    servers: list[ServerProcess] = []
    try:
        servers = [start_model_server(app, model, *args, **kwargs) for _ in range(count)]
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


__all__ = ["ServerProcess", "model_replicas", "start_model_server"]
