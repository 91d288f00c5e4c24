"""Trace context and timings through the real orchestrator and workers (SPEC.md §4.5): a
`SubmitTask`'s `traceparent`/`tracestate` reach the worker unchanged on every attempt, the
`TaskReply` carries `queue_us` and `run_us`, and an over-long context is refused as malformed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import neutrino_protocol as p
import pytest

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
APP = "tests.apps.trace_app:app"


def send(
    sock: Any, task_id: int, log: Path, failures: int = 0, how: str = "retry", run_s: float = 0.05, **meta: Any
) -> p.Message:
    """Submits `seen` and returns the one answer (a reply or a rejection)."""
    payload = msgpack.packb([[str(log), failures, how, run_s], {}])
    sock.send_multipart(p.SubmitTask(id=task_id, task="seen", payload=payload, **meta).encode())
    assert sock.poll(60_000), f"no answer to task {task_id}"
    return p.decode(sock.recv_multipart())


def attempts_seen(log: Path) -> list[list[Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_the_context_reaches_the_worker_unchanged_and_timings_come_back(start, raw, tmp_path: Path) -> None:
    orch = start(workers=1, app=APP)
    sock = raw(orch.address)
    traced = send(sock, 1, tmp_path / "1", traceparent=TRACEPARENT, tracestate=TRACESTATE)
    assert isinstance(traced, p.TaskReply) and traced.status == "ok", traced
    assert msgpack.unpackb(traced.payload) == [1, TRACEPARENT, TRACESTATE]
    assert traced.run_us is not None and traced.run_us >= 50_000, "the task slept 50 ms"
    assert traced.queue_us is not None
    # Without a context the worker gets none; the timings come back all the same.
    plain = send(sock, 2, tmp_path / "2")
    assert isinstance(plain, p.TaskReply) and msgpack.unpackb(plain.payload) == [1, None, None]
    assert plain.queue_us is not None and plain.run_us is not None
    only_parent = send(sock, 3, tmp_path / "3", traceparent=TRACEPARENT)
    assert isinstance(only_parent, p.TaskReply) and msgpack.unpackb(only_parent.payload) == [1, TRACEPARENT, None]


@pytest.mark.parametrize("how", ["retry", "exit"])
def test_every_attempt_carries_the_context_and_queue_time_spans_them(start, raw, tmp_path: Path, how: str) -> None:
    """Attempts 1 and 2 fail (asking for a retry, or killing their worker); attempt 3 answers."""
    orch = start(workers=1, app=APP)
    sock = raw(orch.address)
    log = tmp_path / "attempts"
    reply = send(sock, 1, log, failures=2, how=how, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    assert isinstance(reply, p.TaskReply) and reply.status == "ok", reply
    assert reply.attempts == 3
    assert attempts_seen(log) == [[n, TRACEPARENT, TRACESTATE] for n in (1, 2, 3)]
    # queue_us runs from acceptance to the last attempt's assignment: the two earlier attempts
    # (each ran at least 50 ms) are in it, and so are their backoffs; run_us is the last attempt's.
    assert reply.queue_us is not None and reply.queue_us >= 2 * 50_000
    assert reply.run_us is not None and 50_000 <= reply.run_us < reply.queue_us
    if how == "retry":  # Retry(delay=0.2): each backoff lasted at least 200 ms
        assert reply.queue_us >= 2 * (50_000 + 200_000)


def test_an_orchestrator_error_carries_queue_time_but_no_run_time(start, raw, tmp_path: Path) -> None:
    orch = start(workers=1, app=APP)
    sock = raw(orch.address)
    reply = send(sock, 1, tmp_path / "1", run_s=30.0, timeout_s=0.3, retries=0, traceparent=TRACEPARENT)
    assert isinstance(reply, p.TaskReply) and reply.status == "error", reply
    assert reply.error is not None and reply.error.kind == "timeout"
    assert reply.queue_us is not None and reply.run_us is None


def test_an_over_long_context_is_rejected_as_invalid(start, raw, tmp_path: Path) -> None:
    orch = start(workers=1, app=APP)
    sock = raw(orch.address)
    limit = p.TRACE_MAX_BYTES
    for task_id, meta in [
        (1, {"traceparent": "0" * (limit + 1)}),
        (2, {"traceparent": TRACEPARENT, "tracestate": "é" * (limit // 2 + 1)}),  # 514 UTF-8 bytes
    ]:
        rejected = send(sock, task_id, tmp_path / str(task_id), **meta)
        assert isinstance(rejected, p.TaskRejected), rejected
        assert (rejected.id, rejected.reason) == (task_id, "invalid")
        assert f"over {limit}" in rejected.message, rejected.message
    assert not (tmp_path / "1").exists() and not (tmp_path / "2").exists(), "a rejected task never ran"
    at_limit = send(sock, 3, tmp_path / "3", traceparent="0" * limit)
    assert isinstance(at_limit, p.TaskReply) and msgpack.unpackb(at_limit.payload) == [1, "0" * limit, None]
