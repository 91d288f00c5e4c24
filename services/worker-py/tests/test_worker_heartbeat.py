"""Heartbeats: the side thread in-process (unit), then from a real forked worker (component)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from neutrino_protocol import Heartbeat, Shutdown, TaskResult, WorkerExited, decode
from neutrino_worker.heartbeat import HeartbeatThread, read_rss_kb
from worker_harness import FakeOrchestrator


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[zmq.Socket[Any], str]]:
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/backend.sock"
    router.bind(endpoint)
    yield router, endpoint
    router.close()
    ctx.term()


def recv_beat(router: zmq.Socket[Any], timeout_s: float = 5.0) -> tuple[bytes, Heartbeat]:
    assert router.poll(int(timeout_s * 1000)), "no heartbeat"
    identity, *frames = router.recv_multipart()
    msg = decode(frames)
    assert isinstance(msg, Heartbeat), msg
    return identity, msg


def test_rss_is_read_from_proc() -> None:
    rss = read_rss_kb()
    assert isinstance(rss, int) and rss > 0


def test_thread_beats_from_its_own_routing_id_and_stops(backend: tuple[zmq.Socket[Any], str]) -> None:
    router, endpoint = backend
    beat = HeartbeatThread(endpoint, "w-7", interval_ms=10)
    beat.start()
    for _ in range(3):
        identity, msg = recv_beat(router)
        assert identity == b"w-7/hb"
        assert msg.worker_id == "w-7" and msg.rss_kb is not None and msg.rss_kb > 0
    beat.stop()


def test_first_beat_waits_one_interval(backend: tuple[zmq.Socket[Any], str]) -> None:
    router, endpoint = backend
    beat = HeartbeatThread(endpoint, "w-8", interval_ms=200)
    started = time.monotonic()
    beat.start()
    identity, _ = recv_beat(router)
    assert identity == b"w-8/hb"
    assert time.monotonic() - started >= 0.19, "WorkerReady already said the worker is alive"
    beat.stop()


def test_stopped_within_the_first_interval_sends_nothing(backend: tuple[zmq.Socket[Any], str]) -> None:
    router, endpoint = backend
    beat = HeartbeatThread(endpoint, "w-9", interval_ms=60_000)
    beat.start()
    beat.stop()  # wakes the first wait at once
    assert not router.poll(100), "a short-lived worker never opens the heartbeat connection"


def test_interval_must_be_positive(backend: tuple[zmq.Socket[Any], str]) -> None:
    _, endpoint = backend
    with pytest.raises(ValueError, match="at least 1 ms"):
        HeartbeatThread(endpoint, "w-1", interval_ms=0)


def test_heartbeats_continue_while_a_cpu_bound_task_runs(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    orchestrator.fork("w-1", heartbeat_ms=100)
    identity, msg = orchestrator.recv_backend()  # the first beat comes one interval after start
    assert identity == "w-1/hb" and isinstance(msg, Heartbeat)
    orchestrator.assign("w-1", 1, "spin", 1.0)
    assigned = time.monotonic()
    during: list[Heartbeat] = []
    while True:
        identity, msg = orchestrator.recv_backend()
        if isinstance(msg, TaskResult):
            break
        assert identity == "w-1/hb" and isinstance(msg, Heartbeat), (identity, msg)
        assert msg.worker_id == "w-1" and msg.rss_kb is not None and msg.rss_kb > 0
        # Beats sent before the task started arrive within milliseconds; count only later ones.
        if time.monotonic() - assigned > 0.25:
            during.append(msg)
    assert identity == "w-1" and msg.task_id == 1 and msg.status == "ok"
    assert msg.run_us is not None and msg.run_us >= 900_000
    assert len(during) >= 2, f"only {len(during)} heartbeats during a 1 s CPU-bound task"


def test_no_heartbeats_unless_fork_asks(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    orchestrator.fork("w-1")
    orchestrator.assign("w-1", 1, "spin", 0.3)
    identity, msg = orchestrator.recv_backend()
    assert identity == "w-1" and isinstance(msg, TaskResult)


def test_worker_with_heartbeats_exits_cleanly_on_shutdown(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1", heartbeat_ms=20)
    orchestrator.send_backend("w-1", Shutdown(graceful=True))
    exited = orchestrator.expect(WorkerExited)
    assert (exited.pid, exited.exit_code, exited.signal) == (pids["w-1"], 0, None)


def test_beats_resume_on_a_new_connection_after_the_old_one_drops(tmp_path: Path) -> None:
    """A beat that cannot be sent drops the connection; a later one connects again (same routing id)."""
    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = f"ipc://{tmp_path}/backend.sock"
    first = ctx.socket(zmq.ROUTER)
    first.setsockopt(zmq.LINGER, 0)
    first.bind(endpoint)
    beat = HeartbeatThread(endpoint, "w-3", interval_ms=20)
    try:
        beat.start()
        assert recv_beat(first)[0] == b"w-3/hb"
        first.close()  # the orchestrator's backend goes away...
        second = ctx.socket(zmq.ROUTER)
        second.setsockopt(zmq.LINGER, 0)
        second.bind(endpoint)  # ...and a new one takes its place
        try:
            identity, msg = recv_beat(second)
            assert identity == b"w-3/hb" and msg.worker_id == "w-3"
        finally:
            second.close()
    finally:
        beat.stop()
        ctx.term()
