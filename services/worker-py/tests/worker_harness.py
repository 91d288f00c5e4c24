"""The fake orchestrator the component tests drive a real zygote with (control listener + backend ROUTER).

Only the orchestrator's side is played here: a Unix-socket listener for the control link and a
pyzmq ROUTER for the backend, both in a private run directory (mode 0700), as SPEC §2 lays out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import zmq
from neutrino_protocol import (
    Fork,
    Forked,
    Heartbeat,
    Message,
    TaskAssignment,
    WorkerReady,
    ZygoteCatalog,
    ZygoteReady,
    control_payload_follows,
    decode,
    decode_control,
    encode_control,
)

TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
REPO_ROOT = TESTS_DIR.parents[2]
TIMEOUT_S = 10.0

M = TypeVar("M", bound=Message)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_gone(pid: int, timeout: float = TIMEOUT_S) -> bool:
    """Wait until pid no longer runs (gone, or a zombie that a container's init may never reap)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.01)  # polling a condition with a deadline; there is no event to wait on
    return False


def args_payload(*args: Any, **kwargs: Any) -> bytes:
    return msgpack.packb([list(args), kwargs], use_bin_type=True)


class FakeOrchestrator:
    """The orchestrator's side of the control link and the backend, driving one real zygote."""

    def __init__(self, run_dir: Path, backend: str | None = None) -> None:
        """`backend`: the endpoint the ROUTER binds (default: ipc:// in the run dir, as the real one)."""
        self.run_dir = run_dir
        self.control_path = str(run_dir / "control.sock")
        self.backend = backend or f"ipc://{run_dir}/backend.sock"
        self.log_path = run_dir / "zygote.log"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.control_path)
        self.listener.listen(1)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind(self.backend)
        self.backend = self.router.getsockopt_string(zmq.LAST_ENDPOINT)  # tcp://...:* becomes a port
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: socket.socket | None = None
        self._buffer = b""
        self.catalogs: list[ZygoteCatalog] = []

    # zygote process

    def start(self, app: str = "good_app:app", app_dir: Path = APPS_DIR, *extra: str) -> None:
        env = dict(os.environ)
        env.setdefault("NEUTRINO_LOG", "debug")
        cmd = [sys.executable, "-m", "neutrino_worker.zygote", "--app", app, "--app-dir", str(app_dir)]
        cmd += ["--control", self.control_path, "--backend", self.backend, *extra]
        with open(self.log_path, "ab") as log:
            # Own process group, as the orchestrator starts it; teardown kills the group.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, process_group=0)
        deadline = time.monotonic() + TIMEOUT_S
        self.listener.settimeout(0.1)
        while self.conn is None:
            try:
                self.conn, _ = self.listener.accept()
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"zygote never connected (exit {self.proc.poll()}):\n{self.log()}") from None

    def wait_exit(self, timeout: float = TIMEOUT_S) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"zygote did not exit:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # control link

    def send_control(self, msg: Message) -> None:
        assert self.conn is not None
        self.conn.sendall(encode_control(msg))

    def recv_control(self, timeout: float = TIMEOUT_S) -> Message:
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while True:
            records = self._records(2)
            if records:
                body, *payload = records
                if not control_payload_follows(body[3]):
                    self._buffer = self._buffer[4 + len(body) :]
                    return decode_control(body)
                if payload:
                    self._buffer = self._buffer[8 + len(body) + len(payload[0]) :]
                    return decode_control(body, payload[0])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no control message within {timeout} s:\n{self.log()}")
            self.conn.settimeout(remaining)
            try:
                data = self.conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise EOFError(f"control link closed by the zygote:\n{self.log()}")
            self._buffer += data

    def _records(self, most: int) -> list[bytes]:
        """Up to `most` complete length-prefixed records at the head of the buffer (not consumed)."""
        records, at = [], 0
        while len(records) < most and len(self._buffer) >= at + 4:
            size = int.from_bytes(self._buffer[at : at + 4], "big")
            if len(self._buffer) < at + 4 + size:
                break
            records.append(self._buffer[at + 4 : at + 4 + size])
            at += 4 + size
        return records

    def expect(self, cls: type[M], timeout: float = TIMEOUT_S) -> M:
        """The next control message, which must be a `cls`. The ZygoteCatalog, which the zygote
        sends whenever its link goes quiet after the first Fork, is set aside in `catalogs` unless
        asked for."""
        deadline = time.monotonic() + timeout
        if cls is ZygoteCatalog and self.catalogs:
            return self.catalogs.pop(0)  # type: ignore[return-value]
        while True:
            msg = self.recv_control(max(0.0, deadline - time.monotonic()))
            if isinstance(msg, ZygoteCatalog) and cls is not ZygoteCatalog:
                self.catalogs.append(msg)
                continue
            assert isinstance(msg, cls), f"expected {cls.__name__}, got {msg!r}:\n{self.log()}"
            return msg

    def close_control(self) -> None:
        assert self.conn is not None
        self.conn.close()

    # backend

    def recv_backend(self, timeout: float = TIMEOUT_S) -> tuple[str, Message]:
        if not self.router.poll(int(timeout * 1000)):
            raise AssertionError(f"no backend message within {timeout} s:\n{self.log()}")
        identity, *frames = self.router.recv_multipart()
        return identity.decode(), decode(frames)

    def send_backend(self, worker_id: str, msg: Message) -> None:
        self.router.send_multipart([worker_id.encode(), *msg.encode()])

    def assign(self, worker_id: str, task_id: int, task: str, *args: Any, **kwargs: Any) -> None:
        self.send_backend(worker_id, TaskAssignment(task_id, task, 1, payload=args_payload(*args, **kwargs)))

    # composite steps

    def start_ready(self, app: str = "good_app:app", app_dir: Path = APPS_DIR, *extra: str) -> None:
        self.start(app, app_dir, *extra)
        self.expect(ZygoteReady)

    def fork(self, *worker_ids: str, heartbeat_ms: int | None = None) -> dict[str, int]:
        """Fork workers and wait until each is Forked and WorkerReady; return worker id -> pid.

        With `heartbeat_ms`, heartbeats that arrive meanwhile (they may precede WorkerReady: they
        come on another socket) are skipped."""
        self.send_control(Fork(list(worker_ids), heartbeat_ms=heartbeat_ms))
        pids = {}
        for _ in worker_ids:
            forked = self.expect(Forked)
            pids[forked.worker_id] = forked.pid
        ready: dict[str, WorkerReady] = {}
        while len(ready) < len(worker_ids):
            identity, msg = self.recv_backend()
            if heartbeat_ms is not None and isinstance(msg, Heartbeat):
                continue
            assert isinstance(msg, WorkerReady), msg
            assert identity == msg.worker_id
            ready[identity] = msg
        assert set(pids) == set(worker_ids) == set(ready)
        assert all(ready[w].pid == pids[w] for w in worker_ids)
        return pids

    def close(self) -> None:
        if self.proc is not None:
            # The whole process group, workers included: a failed test must not leak orphans.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT_S)
        if self.conn is not None:
            self.conn.close()
        self.listener.close()
        self.router.close()
        self.ctx.term()
