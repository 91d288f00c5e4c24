"""Heartbeats: the side thread in-process (unit), then from a real forked worker (component)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from neutrino_protocol import Heartbeat, Shutdown, TaskResult, WorkerExited, decode
from neutrino_worker.heartbeat import HeartbeatThread, read_rss_kb
from worker_harness import FakeOrchestrator


@pytest.fixture
def inproc() -> Iterator[tuple[zmq.Context[Any], zmq.Socket[Any], str]]:
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"inproc://hb-{id(router)}"
    router.bind(endpoint)
    yield ctx, router, endpoint
    router.close()
    ctx.term()  # hangs (and the test times out) if a heartbeat socket was left open


def recv_beat(router: zmq.Socket[Any], timeout_s: float = 5.0) -> tuple[bytes, Heartbeat]:
    assert router.poll(int(timeout_s * 1000)), "no heartbeat"
    identity, *frames = router.recv_multipart()
    msg = decode(frames)
    assert isinstance(msg, Heartbeat), msg
    return identity, msg


def test_rss_is_read_from_proc() -> None:
    rss = read_rss_kb()
    assert isinstance(rss, int) and rss > 0


def test_thread_beats_from_its_own_routing_id_and_stops(inproc: tuple[zmq.Context[Any], zmq.Socket[Any], str]) -> None:
    ctx, router, endpoint = inproc
    beat = HeartbeatThread(ctx, endpoint, "w-7", interval_ms=10)
    beat.start()
    for _ in range(3):
        identity, msg = recv_beat(router)
        assert identity == b"w-7/hb"
        assert msg.worker_id == "w-7" and msg.rss_kb is not None and msg.rss_kb > 0
    assert beat.stop()


def test_first_beat_waits_one_interval(inproc: tuple[zmq.Context[Any], zmq.Socket[Any], str]) -> None:
    ctx, router, endpoint = inproc
    beat = HeartbeatThread(ctx, endpoint, "w-8", interval_ms=200)
    started = time.monotonic()
    beat.start()
    identity, _ = recv_beat(router)
    assert identity == b"w-8/hb"
    assert time.monotonic() - started >= 0.19, "WorkerReady already said the worker is alive"
    assert beat.stop()


def test_stopped_within_the_first_interval_sends_nothing(
    inproc: tuple[zmq.Context[Any], zmq.Socket[Any], str],
) -> None:
    ctx, router, endpoint = inproc
    beat = HeartbeatThread(ctx, endpoint, "w-9", interval_ms=60_000)
    beat.start()
    assert beat.stop(), "stop() wakes the first wait at once"
    assert not router.poll(100), "a short-lived worker never opens the heartbeat socket"


def test_interval_must_be_positive(inproc: tuple[zmq.Context[Any], zmq.Socket[Any], str]) -> None:
    ctx, _, endpoint = inproc
    with pytest.raises(ValueError, match="at least 1 ms"):
        HeartbeatThread(ctx, endpoint, "w-1", interval_ms=0)


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
