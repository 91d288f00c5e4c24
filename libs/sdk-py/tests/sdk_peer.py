"""A stand-in orchestrator for client tests: a ROUTER on its own thread speaking the real protocol.

It binds `address` ("tcp://" alone: a random local port), records the routing identity of every
message in `senders`, and answers each SubmitTask by task name, so a test picks the behaviour by
what it calls:

    add         ok: sum of the positional arguments
    echo        ok: the first positional argument, else the kwargs map
    retried     ok: the first positional argument, after 3 attempts
    fail        error task_error ValueError(args[0]) with a traceback
    error:KIND  error of that kind (ename = the kind)
    reject:WHY  TaskRejected with that reason
    garbage     a malformed frame, a TaskReply for an unknown id, then ok args[0]
    hold        no answer until release_held(), or a CancelTask (answered `cancelled`, attempts 0)

DescribeTasks is answered `ready: false` while `not_ready_answers` is above zero (counting down),
then with `catalog` (None: never answered, like an orchestrator that predates the message).

Tests wait on `wait_for(predicate)`, which wakes on every message the peer records.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
from neutrino.codec import pack_result, unpack_args
from neutrino_protocol import (
    CancelTask,
    DescribeTasks,
    ErrorInfo,
    MessageType,
    Ping,
    Pong,
    SubmitTask,
    TaskCatalog,
    TaskRejected,
    TaskReply,
    decode,
    header,
)

TRACEBACK = 'Traceback (most recent call last):\n  File "app.py", line 3, in fail\nValueError: {}\n'


class Peer:
    def __init__(self, address: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        if address == "tcp://":
            port = self._sock.bind_to_random_port("tcp://127.0.0.1")
            self.address = f"tcp://127.0.0.1:{port}"
        else:
            self._sock.bind(address)
            self.address = address
        self._ctl_addr = f"inproc://peer-ctl-{id(self)}"
        self._ctl_in = self._ctx.socket(zmq.PAIR)
        self._ctl_in.bind(self._ctl_addr)
        self._ctl_out = self._ctx.socket(zmq.PAIR)
        self._ctl_out.connect(self._ctl_addr)
        self._ctl_lock = threading.Lock()
        self._cond = threading.Condition()
        self.submits: list[SubmitTask] = []
        self.cancels: list[int] = []
        self.pings = 0
        self.describes = 0
        self.catalog: dict[str, Any] | None = {}
        self.not_ready_answers = 0
        self.senders: list[bytes] = []
        self._held: list[tuple[bytes, SubmitTask]] = []
        self._thread = threading.Thread(target=self._run, name="sdk-test-peer", daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Callable[[Peer], bool], timeout_s: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout_s):
                raise AssertionError(f"peer condition not met within {timeout_s}s")

    def release_held(self) -> None:
        self._control(b"release")

    def stop(self) -> None:
        self._control(b"stop")
        self._thread.join()
        self._ctl_out.close()
        self._ctx.term()

    def _control(self, cmd: bytes) -> None:
        with self._ctl_lock:
            self._ctl_out.send(cmd)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._ctl_in, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._ctl_in in ready:
                    cmd = self._ctl_in.recv()
                    if cmd == b"stop":
                        return
                    held, self._held = self._held, []
                    for ident, msg in held:
                        self._reply(ident, msg, "echo")
                if self._sock in ready:
                    while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        self._handle(self._sock.recv_multipart(zmq.NOBLOCK))
        finally:
            self._sock.close()
            self._ctl_in.close()

    def _handle(self, frames: list[bytes]) -> None:
        ident, rest = frames[0], frames[1:]
        msg = decode(rest)
        with self._cond:
            self.senders.append(ident)
            if isinstance(msg, SubmitTask):
                self.submits.append(msg)
            elif isinstance(msg, CancelTask):
                self.cancels.append(msg.id)
            elif isinstance(msg, Ping):
                self.pings += 1
            elif isinstance(msg, DescribeTasks):
                self.describes += 1
            self._cond.notify_all()
        if isinstance(msg, Ping):
            pong = Pong(nonce=msg.nonce, queue_depth=3, workers=2, idle_workers=1, draining=False)
            self._send(ident, pong.encode())
        elif isinstance(msg, DescribeTasks):
            if self.not_ready_answers > 0:
                self.not_ready_answers -= 1
                self._send(ident, TaskCatalog(nonce=msg.nonce, ready=False, tasks=[]).encode())
            elif self.catalog is not None:
                payload = msgpack.packb(self.catalog, use_bin_type=True)
                self._send(ident, TaskCatalog(msg.nonce, True, list(self.catalog), payload).encode())
        elif isinstance(msg, CancelTask):
            # As the orchestrator does for a task it still holds; other ids are ignored.
            for i, (held_ident, held) in enumerate(self._held):
                if (held_ident, held.id) == (ident, msg.id):
                    del self._held[i]
                    err = ErrorInfo("cancelled", "cancelled", "cancelled by the client")
                    self._send(ident, TaskReply(id=msg.id, status="error", attempts=0, error=err).encode())
                    break
        elif isinstance(msg, SubmitTask):
            if msg.task == "hold":
                self._held.append((ident, msg))
            else:
                self._reply(ident, msg, msg.task)

    def _reply(self, ident: bytes, msg: SubmitTask, behaviour: str) -> None:
        args, kwargs = unpack_args(msg.payload or b"")
        out: list[bytes]
        if behaviour == "add":
            out = _ok(msg.id, sum(args))
        elif behaviour == "echo":
            out = _ok(msg.id, args[0] if args else kwargs)
        elif behaviour == "retried":
            out = _ok(msg.id, args[0], attempts=3)
        elif behaviour == "fail":
            err = ErrorInfo("task_error", "ValueError", str(args[0]), TRACEBACK.format(args[0]))
            out = TaskReply(id=msg.id, status="error", attempts=2, error=err).encode()
        elif behaviour.startswith("error:"):
            kind = behaviour.partition(":")[2]
            err = ErrorInfo(kind, kind, "it went wrong")
            out = TaskReply(id=msg.id, status="error", attempts=1, error=err).encode()
        elif behaviour.startswith("reject:"):
            reason = behaviour.partition(":")[2]
            out = TaskRejected(id=msg.id, reason=reason, message=f"rejected: {reason}").encode()
        elif behaviour == "garbage":
            self._send(ident, [b"junk"])
            self._send(ident, [b"NT\x09\x04", b"\x80"])  # unsupported protocol version
            self._send(ident, [header(MessageType.TASK_REPLY), b"\xc1"])  # meta is not msgpack
            self._send(ident, _ok(10**9 + msg.id, "stray"))
            out = _ok(msg.id, args[0])
        else:
            raise AssertionError(f"peer has no behaviour {behaviour!r}")
        self._send(ident, out)

    def _send(self, ident: bytes, frames: list[bytes]) -> None:
        self._sock.send_multipart([ident, *frames])


def _ok(task_id: int, value: Any, attempts: int = 1) -> list[bytes]:
    return TaskReply(id=task_id, status="ok", attempts=attempts, payload=pack_result(value)).encode()
