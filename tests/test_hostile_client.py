"""A hostile client against a live orchestrator's tcp frontend: for a bounded time, DEALERs send
random multipart messages and mutations of valid ones (SubmitTask above all, built with
neutrino_protocol), some never reading what they are answered, and raw TCP peers send bytes that
are not ZMTP at all; meanwhile a well-behaved `neutrino.Client` keeps calling a task, and a bare
DEALER that records every reply submits tasks of its own.

Checked: the orchestrator never exits; every good call is answered, correctly, and every task of
the recording client exactly once; the orchestrator's RSS stays bounded; the malformed messages are
counted in `neutrino_orchestrator_malformed_messages_total`; /healthz still answers.

What the orchestrator's RSS grows by under this traffic is mostly the replies queued for the peers
that never read them (about 250 bytes a reply, up to the frontend's per-peer high-water mark), so
those peers send a bounded number of messages; with every peer reading, a 60 s run grew it by
under 10 MB.

The run is seeded: a failure prints the seed, and `NEUTRINO_HOSTILE_SEED=<seed>` replays the same
hostile traffic (`NEUTRINO_HOSTILE_SECONDS` runs it longer)."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import socket
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import neutrino_protocol as p
import pytest
import zmq
from neutrino import Client, WorkerDiedError

from .conftest import Orchestrator, free_port, http_ok, wait_until

APP = "tests.apps.fuzz_app:app"
SEED = int(os.environ.get("NEUTRINO_HOSTILE_SEED", random.SystemRandom().randrange(2**32)))
DURATION_S = float(os.environ.get("NEUTRINO_HOSTILE_SECONDS", "15"))
RSS_GROWTH_LIMIT_KB = 50 * 1024
REPLY_TIMEOUT_MS = 30_000
MALFORMED = re.compile(r'^neutrino_orchestrator_malformed_messages_total\{side="frontend"\} (\d+)', re.M)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def args(*values: Any) -> bytes:
    return bytes(msgpack.packb([list(values), {}], use_bin_type=True))


# ---- hostile traffic ----------------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2**31, 2**32, 2**63, 2**64 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -1.0, 1e308, float("inf"), float("-inf"), float("nan"), rng.random()])
    if kind == 4:
        return "".join(rng.choice("add total \x00é☃") for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.randbytes(rng.randrange(12))
    if kind == 6:
        return rng.choice(["ok", "error", "add", ""])
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(random_value(rng, depth + 1)): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def valid_message(rng: random.Random) -> list[bytes]:
    ids = [0, 1, 2**32, 2**64 - 1, rng.randrange(1, 1000)]
    choice = rng.randrange(10)
    if choice < 6:
        task = rng.choice(["add", "total", "shout", "fail", "nope", ""])
        return p.SubmitTask(
            id=rng.choice(ids),
            task=task,
            timeout_s=rng.choice([None, 0.5, -1.0, 0.0, 1e300, float("nan")]),
            retries=rng.choice([None, 0, 3, 2**32 - 1]),
            ack=rng.choice([None, True, False]),
            payload=rng.choice([args(1, 2), args("x"), args(*range(50)), b"", rng.randbytes(rng.randrange(64))]),
        ).encode()
    if choice == 6:
        return p.CancelTask(id=rng.choice(ids)).encode()
    if choice == 7:
        return p.Ping(nonce=rng.choice(ids)).encode()
    if choice == 8:
        return p.DescribeTasks(nonce=rng.choice(ids)).encode()
    # messages that belong on other links
    return rng.choice(
        [
            p.TaskResult(task_id=rng.randrange(1, 100), status="ok", payload=b"\x01").encode(),
            p.WorkerReady(worker_id="w-1", pid=0, credits=1, tasks=["add"]).encode(),
            p.TaskReply(id=1, status="ok", attempts=1, payload=b"\x01").encode(),
            p.Forked(worker_id="w-1", pid=1).encode(),
        ]
    )


def mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    frames = list(frames)
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(frames)) if frames else 0
        how = rng.randrange(9)
        if not frames:
            frames.append(rng.randbytes(rng.randrange(8)))
        elif how == 0:  # flip bits
            frame = bytearray(frames[i])
            if frame:
                frame[rng.randrange(len(frame))] ^= rng.randrange(1, 256)
            frames[i] = bytes(frame)
        elif how == 1:  # truncate
            frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
        elif how == 2:  # trailing bytes
            frames[i] += rng.randbytes(rng.randrange(1, 8))
        elif how == 3:
            del frames[i]
        elif how == 4:
            frames.insert(i, rng.choice([b"", rng.randbytes(rng.randrange(16)), frames[i]]))
        elif how == 5:  # header: another version, type or signature
            frames[0] = rng.choice([b"NT\x02", b"NT\x00", b"XX\x01", b"NT\x01"]) + bytes([rng.randrange(256)])
        elif how == 6 and len(frames) > 1:  # a field of another type, or a missing one
            try:
                meta = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
            except Exception:
                continue
            if isinstance(meta, dict) and meta:
                key = rng.choice(sorted(meta, key=str))
                if rng.random() < 0.3:
                    del meta[key]
                else:
                    meta[key] = random_value(rng)
            frames[1] = msgpack.packb(meta, use_bin_type=True)
        elif how == 7 and len(frames) > 1:  # meta that is not a map
            frames[1] = msgpack.packb(random_value(rng), use_bin_type=True)
        elif how == 8:  # a big frame (under the hard cap: a bigger one would cost the connection)
            frames.append(rng.randbytes(rng.randrange(1 << 16)))
    return frames or [b""]


def hostile_message(rng: random.Random) -> list[bytes]:
    roll = rng.random()
    if roll < 0.15:
        return [rng.randbytes(rng.randrange(40)) for _ in range(rng.randrange(1, 6))]
    frames = valid_message(rng)
    return frames if roll < 0.25 else mutate(rng, frames)


def raw_tcp_garbage(rng: random.Random, port: int) -> None:
    """A peer that does not speak ZMTP: random bytes, a greeting cut short, a bogus mechanism."""
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    data = rng.choice(
        [
            rng.randbytes(rng.randrange(1, 512)),
            greeting[: rng.randrange(len(greeting))],
            greeting[:12] + b"CURVE".ljust(20, b"\x00") + rng.randbytes(40),
            greeting + rng.randbytes(rng.randrange(200)),
        ]
    )
    # the orchestrator may hang up first
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s, contextlib.suppress(OSError):
        s.sendall(data)


class Hostile:
    """DEALERs that send hostile traffic. Half of them never read their replies, and get at most
    `UNREAD_CAP` messages each: what those replies hold in the orchestrator is bounded by its
    per-peer high-water mark, not by this test, so a faster machine must not make it grow more."""

    UNREAD_CAP = 20_000

    def __init__(self, ctx: zmq.Context[Any], address: str, port: int, rng: random.Random) -> None:
        self.rng = rng
        self.port = port
        self.readers: list[zmq.Socket[Any]] = []
        self.silent: dict[zmq.Socket[Any], int] = {}
        for n in range(6):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndhwm = 1000
            if n % 3 == 0:
                sock.setsockopt(zmq.ROUTING_ID, b"hostile-%d" % n)
            sock.connect(address)
            if n % 2 == 0:
                self.readers.append(sock)
            else:
                self.silent[sock] = 0
        self.sent = 0

    def run(self, until: float) -> None:
        while time.monotonic() < until:
            open_silent = [s for s, n in self.silent.items() if n < self.UNREAD_CAP]
            sock = self.rng.choice(self.readers + open_silent)
            try:
                sock.send_multipart(hostile_message(self.rng), flags=zmq.NOBLOCK)
                self.sent += 1
                if sock in self.silent:
                    self.silent[sock] += 1
            except zmq.Again:
                pass  # our own pipe is full: the orchestrator is slower than us, as expected
            if sock not in self.silent:
                while sock.poll(0):
                    sock.recv_multipart()
            if self.rng.random() < 0.002:
                raw_tcp_garbage(self.rng, self.port)

    def close(self) -> None:
        for sock in self.readers + list(self.silent):
            sock.close()


# ---- well-behaved clients -----------------------------------------------------------------


class Recorder:
    """A bare DEALER that submits `add` tasks and keeps every reply it gets, by task id."""

    def __init__(self, ctx: zmq.Context[Any], address: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.ROUTING_ID, b"recorder-%d" % os.getpid())
        self.sock.connect(address)
        self.replies: dict[int, list[p.Message]] = defaultdict(list)
        self.submitted: dict[int, int] = {}
        self._ids = itertools.count(1)

    def round(self, batch: int = 8) -> None:
        ids = []
        for _ in range(batch):
            task_id = next(self._ids)
            self.submitted[task_id] = task_id * 2
            self.sock.send_multipart(p.SubmitTask(id=task_id, task="add", payload=args(task_id, task_id)).encode())
            ids.append(task_id)
        while not all(self.replies[i] for i in ids):
            self.receive_one()

    def receive_one(self) -> p.Message:
        assert self.sock.poll(REPLY_TIMEOUT_MS), "the orchestrator stopped answering the recording client"
        msg = p.decode(self.sock.recv_multipart())
        if isinstance(msg, (p.TaskReply, p.TaskRejected)):
            self.replies[msg.id].append(msg)
        return msg

    def barrier(self) -> None:
        """A Ping round trip: every reply sent before the Pong has arrived."""
        self.sock.send_multipart(p.Ping(nonce=0).encode())
        while not isinstance(self.receive_one(), p.Pong):
            pass


def in_thread(target: Callable[[], None], failures: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(180)
def test_hostile_frames_cost_the_pod_nothing(start: Callable[..., Orchestrator]) -> None:
    port, metrics_port = free_port(), free_port()
    tcp = f"tcp://127.0.0.1:{port}"
    orch = start("--frontend", tcp, "--metrics", f"127.0.0.1:{metrics_port}", workers=2, app=APP)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/healthz"), what="metrics up")
    ctx = zmq.Context()
    failures: list[BaseException] = []
    good_calls = [0]
    stop = threading.Event()

    def good_client() -> None:
        with Client(tcp, timeout_s=REPLY_TIMEOUT_MS / 1000) as client:
            for i in itertools.count():
                if stop.is_set():
                    return
                assert client.call("add", i, 1) == i + 1
                good_calls[0] += 1

    recorder = Recorder(ctx, tcp)

    def recording_client() -> None:
        while not stop.is_set():
            recorder.round()

    try:
        # Warm up (connections, allocator, worker caches) before the baseline RSS.
        recorder.round(64)
        rss_before = rss_kb(orch.proc.pid)
        threads = [in_thread(good_client, failures), in_thread(recording_client, failures)]
        hostile = Hostile(ctx, tcp, port, random.Random(SEED))
        try:
            hostile.run(until=time.monotonic() + DURATION_S)
        finally:
            hostile.close()
        calls_during = good_calls[0]
        stop.set()
        for t in threads:
            t.join(REPLY_TIMEOUT_MS / 1000 + 5)
        recorder.barrier()
        rss_after = rss_kb(orch.proc.pid)
        text = metrics(metrics_port)
    finally:
        stop.set()
        recorder.sock.close()
        ctx.destroy(linger=0)

    context = f"seed {SEED} (replay: NEUTRINO_HOSTILE_SEED={SEED})"
    assert not failures, f"{context}: a well-behaved client failed: {failures[0]!r}"
    assert orch.proc.poll() is None, f"{context}: the orchestrator exited:\n{orch.log[-3000:]}"
    assert calls_during > 0, f"{context}: the good client got no call through during the hostile traffic"
    wrong = {i: r for i, r in recorder.replies.items() if len(r) != 1 or not _answered(r[0], recorder.submitted[i])}
    assert not wrong, f"{context}: tasks not answered exactly once, correctly: {dict(list(wrong.items())[:5])}"
    assert set(recorder.replies) == set(recorder.submitted), context
    growth = rss_after - rss_before
    assert growth < RSS_GROWTH_LIMIT_KB, f"{context}: RSS grew {growth} kB ({rss_before} -> {rss_after})"
    m = MALFORMED.search(text)
    assert m and int(m.group(1)) > 0, f"{context}: no malformed frontend messages counted:\n{text}"
    assert http_ok(f"http://127.0.0.1:{metrics_port}/healthz"), context
    print(
        f"hostile: seed {SEED}, {hostile.sent} messages in {DURATION_S:.0f}s, {calls_during} good calls and "
        f"{len(recorder.submitted)} recorded tasks meanwhile, {m.group(1)} malformed counted, "
        f"RSS {rss_before} -> {rss_after} kB"
    )


def _answered(reply: p.Message, expected: int) -> bool:
    if not isinstance(reply, p.TaskReply) or reply.status != "ok" or reply.payload is None:
        return False
    return bool(msgpack.unpackb(reply.payload) == expected)


@pytest.mark.timeout(60)
def test_a_malformed_control_message_from_the_zygote_costs_only_itself(start: Callable[..., Orchestrator]) -> None:
    """The zygote of this app sends a malformed record before every Forked and WorkerExited: each
    is skipped and counted, the real report after it is acted on, and the pod keeps serving."""
    metrics_port = free_port()
    orch = start("--metrics", f"127.0.0.1:{metrics_port}", workers=1, app="tests.apps.malformed_control_app:app")
    with Client(orch.address, timeout_s=REPLY_TIMEOUT_MS / 1000) as client:
        assert client.call("add", 1, 2) == 3
        with pytest.raises(WorkerDiedError):
            client.call("end_worker", 3)  # 3: the code that once stopped the pod
        assert client.call("add", 2, 2) == 4  # served by the replacement
    orch.wait_for(r"ignoring a malformed control message from the zygote")
    assert orch.proc.poll() is None, orch.log
    control = re.search(r'malformed_messages_total\{side="control"\} (\d+)', metrics(metrics_port))
    # a Forked and a WorkerExited for the first worker, a Forked for its replacement
    assert control and int(control.group(1)) >= 3, orch.log
