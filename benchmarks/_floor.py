"""The floor: the least a ZeroMQ + msgpack dispatcher can cost here, to measure Neutrino against.

The zguide's extended request-reply shape, with the same frames Neutrino puts on the wire:

    client DEALER ──tcp──▶ ROUTER │ zmq.proxy (C, own process) │ DEALER ◀──ipc── worker ROUTER (x N)

The client sends SubmitTask frames [header, meta, payload]; the proxy's frontend ROUTER prepends
the client's routing id, its backend DEALER deals messages round-robin to the workers (no
window, no load tracking: unlimited pipelining), and each worker's ROUTER adds the proxy's id in
front. A worker decodes meta and payload with msgpack, calls the task function, and answers
TaskReply frames behind the same envelope, so the reply routes back to the client unchanged.

`RawDealer` is the client floor for throughput: a bare DEALER pushing pre-packed frames at the
real orchestrator, beside which `neutrino.Client`'s submit and map are measured.

Run as a script for the server halves: `_floor.py proxy FRONTEND BACKEND`, `_floor.py worker BACKEND`.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
from neutrino_protocol import MessageType, SubmitTask, TaskReply, header

SUBMIT_HEADER = header(MessageType.SUBMIT_TASK)
REPLY_HEADER = header(MessageType.TASK_REPLY)
NO_ARGS = msgpack.packb([[], {}])
SEND_BATCH = 256  # sends per poll turn in a burst, so replies are drained often enough
POLL_MS = 200


def socket(kind: int) -> zmq.Socket[bytes]:
    """A floor socket without high-water marks: a ROUTER at its HWM silently drops replies, and
    the proxy has no flow control of its own, so a burst would otherwise lose tasks."""
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


# ---------------------------------------------------------------- servers


def noop() -> None:
    return None


def echo(data: bytes) -> bytes:
    return data


TASKS: dict[str, Callable[..., Any]] = {"noop": noop, "echo": echo, "whoami": os.getpid}


def run_proxy(frontend: str, backend: str) -> None:
    front = socket(zmq.ROUTER)
    front.bind(frontend)
    back = socket(zmq.DEALER)
    back.bind(backend)
    zmq.proxy(front, back)  # runs until the process is terminated


def run_worker(backend: str) -> None:
    sock = socket(zmq.ROUTER)
    sock.connect(backend)
    packb, unpackb = msgpack.packb, msgpack.unpackb
    while True:
        frames = sock.recv_multipart()
        envelope, (head, meta_frame, payload) = frames[:-3], frames[-3:]
        if head != SUBMIT_HEADER:
            continue
        meta = unpackb(meta_frame)
        args, kwargs = unpackb(payload)
        result = TASKS[meta["task"]](*args, **kwargs)
        reply_meta = packb({"id": meta["id"], "status": "ok", "attempts": 1})
        sock.send_multipart([*envelope, REPLY_HEADER, reply_meta, packb(result)])


# ---------------------------------------------------------------- client


class FloorError(RuntimeError):
    pass


class FloorClient:
    """A plain DEALER client speaking SubmitTask / TaskReply, one call or one burst at a time."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0) -> None:
        self._sock = socket(zmq.DEALER)
        self._sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._timeout_s = timeout_s
        self._check_encoding()

    @staticmethod
    def _check_encoding() -> None:
        """The hand-built frames below must be byte for byte what neutrino_protocol encodes."""
        ours = [SUBMIT_HEADER, msgpack.packb({"id": 7, "task": "noop"}), NO_ARGS]
        if ours != SubmitTask(id=7, task="noop", payload=NO_ARGS).encode():
            raise FloorError("floor SubmitTask frames differ from neutrino_protocol's encoding")
        reply = [REPLY_HEADER, msgpack.packb({"id": 7, "status": "ok", "attempts": 1}), msgpack.packb(None)]
        if reply != TaskReply(id=7, status="ok", attempts=1, payload=msgpack.packb(None)).encode():
            raise FloorError("floor TaskReply frames differ from neutrino_protocol's encoding")

    def call(self, task: str, *args: Any) -> Any:
        task_id = next(self._ids)
        meta = msgpack.packb({"id": task_id, "task": task})
        self._sock.send_multipart([SUBMIT_HEADER, meta, msgpack.packb([args, {}])])
        _head, meta_frame, *payload = self._sock.recv_multipart()
        reply = msgpack.unpackb(meta_frame)
        if reply["id"] != task_id or reply["status"] != "ok":
            raise FloorError(f"unexpected reply {reply!r} to task {task_id}")
        return msgpack.unpackb(payload[0])

    def wait_for_workers(self, count: int, timeout_s: float) -> None:
        """Call `whoami` until `count` distinct worker pids answered (the proxy deals round-robin
        only to connected workers, so this is the floor's readiness signal)."""
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while len(seen) < count:
            if time.monotonic() > deadline:
                raise FloorError(f"only {len(seen)} of {count} floor workers answered within {timeout_s}s")
            seen.add(self.call("whoami"))

    def burst(self, count: int) -> dict[str, Any]:
        """Send `count` noop tasks as fast as the socket takes them while draining replies on the
        same thread (one poller, so a full send queue never deadlocks against unread replies)."""
        first = next(self._ids)
        self._ids = itertools.count(first + count)
        replies = bytearray(count)
        sock, poller = self._sock, zmq.Poller()
        poller.register(sock, zmq.POLLIN | zmq.POLLOUT)
        sent = received = 0
        deadline = time.monotonic() + self._timeout_s + count / 1000
        started = time.perf_counter()
        while received < count:
            if time.monotonic() > deadline:
                raise FloorError(f"burst stalled: {sent} sent, {received} of {count} replies")
            events = dict(poller.poll(POLL_MS)).get(sock, 0)
            if events & zmq.POLLIN:
                received += self._drain(first, replies)
            if sent < count and events & zmq.POLLOUT:
                sent = self._send_some(first, sent, count)
                if sent == count:
                    poller.modify(sock, zmq.POLLIN)
        elapsed = time.perf_counter() - started
        missing, duplicates = replies.count(0), sum(n > 1 for n in replies)
        ok = not (missing or duplicates)
        return {"elapsed_s": elapsed, "all_replied_once": ok, "missing": missing, "duplicates": duplicates}

    def _send_some(self, first: int, sent: int, count: int) -> int:
        stop = min(count, sent + SEND_BATCH)
        try:
            while sent < stop:
                meta = msgpack.packb({"id": first + sent, "task": "noop"})
                self._sock.send_multipart([SUBMIT_HEADER, meta, NO_ARGS], zmq.NOBLOCK)
                sent += 1
        except zmq.Again:
            pass
        return sent

    def _drain(self, first: int, replies: bytearray) -> int:
        received = 0
        while True:
            try:
                _head, meta_frame, *payload = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return received
            meta = msgpack.unpackb(meta_frame)
            if meta["status"] != "ok":
                raise FloorError(f"task {meta['id']} failed: {meta!r}")
            msgpack.unpackb(payload[0])
            replies[meta["id"] - first] = min(replies[meta["id"] - first] + 1, 255)
            received += 1

    def close(self) -> None:
        self._sock.close()


class RawDealer:
    """The client floor: a bare DEALER pushing no-op tasks at a real orchestrator's frontend with no
    per-task work but the send and the receive. Every SubmitTask frame of a burst is packed before
    the clock starts, and replies are counted, not decoded, so what a burst costs this process is
    the least any Python client can spend; `neutrino.Client`'s submit and map are measured against
    it on the same orchestrator, which leaves the client's own cost as the difference."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0) -> None:
        self._sock = socket(zmq.DEALER)
        self._sock.connect(endpoint)
        self._timeout_s = timeout_s
        self._next_id = 1

    def burst(self, count: int) -> dict[str, Any]:
        metas = [msgpack.packb({"id": self._next_id + i, "task": "noop"}) for i in range(count)]
        self._next_id += count
        sock, head, args = self._sock, SUBMIT_HEADER, NO_ARGS
        # pyzmq's compiled send, as neutrino.Client uses, so the floor is not slower than the client.
        send, recv, poll = zmq.backend.Socket.send, sock.recv, sock.poll
        more, last, nowait = zmq.SNDMORE | zmq.NOBLOCK, zmq.NOBLOCK, zmq.NOBLOCK
        sent = received = replies = 0
        deadline = time.monotonic() + self._timeout_s + count / 1000
        started = time.perf_counter()
        while received < count:
            stop = min(count, sent + SEND_BATCH)
            while sent < stop:
                send(sock, head, more)
                send(sock, metas[sent], more)
                send(sock, args, last)
                sent += 1
            if sent == count and not poll(POLL_MS, zmq.POLLIN) and time.monotonic() > deadline:
                raise FloorError(f"raw burst stalled: {received} of {count} replies")
            while True:
                try:
                    frame = recv(nowait, copy=False)
                except zmq.Again:
                    break
                replies += frame.bytes == REPLY_HEADER
                while frame.more:
                    frame = recv(nowait, copy=False)
                received += 1
        elapsed = time.perf_counter() - started
        return {"elapsed_s": elapsed, "all_replied_once": replies == count, "not_task_reply": count - replies}

    def close(self) -> None:
        self._sock.close()


def main(argv: list[str]) -> None:
    if argv[:1] == ["proxy"] and len(argv) == 3:
        run_proxy(argv[1], argv[2])
    elif argv[:1] == ["worker"] and len(argv) == 2:
        run_worker(argv[1])
    else:
        sys.exit("usage: _floor.py proxy FRONTEND BACKEND | _floor.py worker BACKEND")


if __name__ == "__main__":
    main(sys.argv[1:])
