"""A real gateway process for end-to-end tests, and a small blocking HTTP client for talking to it.

The gateway is `python -m neutrino_gateway` on port 0; its "gateway listening on http://HOST:PORT"
log line is the readiness signal for the socket, and /readyz (a task pod answered and its task
catalog arrived) the one for serving runs. Stopped by pid (SIGTERM, then SIGKILL) at teardown.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from .conftest import ProcessLog

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def msgpack(self) -> Any:
        return msgpack.unpackb(self.body, raw=False)

    @property
    def data(self) -> Any:
        """The body, decoded as its Content-Type says (JSON or msgpack)."""
        return self.msgpack if self.headers.get("Content-Type", "").startswith("application/msgpack") else self.json


@dataclass(kw_only=True)
class Gateway(ProcessLog):
    db: Path
    port: int = 0
    token: str | None = TOKEN

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        auth: bool = True,
        timeout: float = 60.0,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = dict(headers or {})
            if auth and self.token is not None:
                sent.setdefault("Authorization", f"Bearer {self.token}")
            data = raw
            if data is None and body is not None:
                data = msgpack.packb(body) if content_type == "application/msgpack" else json.dumps(body).encode()
            if data is not None:
                sent.setdefault("Content-Type", content_type)
            conn.request(method, path, body=data, headers=sent)
            reply = conn.getresponse()
            return Response(reply.status, {k: v for k, v in reply.getheaders()}, reply.read())
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.request("GET", "/readyz", timeout=2).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not ready within {timeout}s:\n{self.log}")
            time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_gateway(
    orchestrators: Iterable[str],
    db: Path,
    *args: str,
    token: str | None = TOKEN,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
) -> Gateway:
    cmd = [sys.executable, "-m", "neutrino_gateway", "--port", "0", "--db", str(db), "--ping-interval", "0.1"]
    cmd += ["--pod-timeout", "1.0"]
    for address in orchestrators:
        cmd += ["--orchestrator", address]
    cmd += ["--auth-token", token] if token is not None else ["--no-auth"]
    proc = subprocess.Popen(
        [*cmd, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    gateway = Gateway(proc=proc, db=db, token=token)
    gateway.follow()
    gateway.port = int(gateway.wait_for(r"gateway listening on http://[^:]+:(\d+)").group(1))
    if wait_ready:
        gateway.wait_ready()
    return gateway
