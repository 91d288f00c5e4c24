"""Client -> real orchestrator binary -> real zygote and workers -> result, over real sockets."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import urllib.request
from pathlib import Path

import msgpack
import neutrino_protocol as p
import pytest
from neutrino import (
    BadArgumentsError,
    BusyError,
    Client,
    DrainingError,
    PayloadTooLargeError,
    ShuttingDownError,
    TaskError,
    UnknownTaskError,
    WorkerDiedError,
)

from .conftest import free_port, start_orchestrator, wait_until


def test_sync_and_async_tasks_return_their_values(start) -> None:
    orch = start()
    with Client(orch.address) as client:
        assert client.call("add", 2, 3) == 5
        assert client.call("add", x=1, y=-1) == 0
        assert client.call("greet", "Ada") == "Hello, Ada!"
        assert client.call("noop") is None
        assert client.call("echo", b"\x00\xff" * 10) == b"\x00\xff" * 10


def test_errors_keep_type_message_and_traceback(start) -> None:
    orch = start()
    with Client(orch.address) as client, pytest.raises(TaskError) as err:
        client.call("fail", "kaput")
    assert err.value.type == "ValueError"
    assert err.value.message == "kaput"
    assert err.value.traceback is not None and "raise ValueError" in err.value.traceback
    assert err.value.kind == "task_error"


def test_unknown_task_and_bad_arguments_are_typed(start) -> None:
    orch = start(workers=1)
    with Client(orch.address) as client:
        with pytest.raises(UnknownTaskError, match="nope"):
            client.call("nope")
        with pytest.raises(BadArgumentsError, match="y"):
            client.call("add", 1)
        with pytest.raises(BadArgumentsError):
            client.call("add", 1, 2, z=3)
        assert client.call("add", 1, 2) == 3, "the worker survives bad calls"


def test_ten_thousand_concurrent_submits_each_come_back_once(start) -> None:
    orch = start()
    n = 10_000
    with Client(orch.address) as client:
        futures = {client.submit("add", i, i): i for i in range(n)}
        seen = 0
        for fut in cf.as_completed(futures, timeout=120):
            assert fut.result() == 2 * futures[fut]
            seen += 1
        assert seen == n
        stats = client.ping()
        assert stats["queue_depth"] == 0 and stats["idle_workers"] == 2


def test_every_submit_is_answered_exactly_once_on_the_wire(start, raw) -> None:
    """Counts replies per id at the wire, below the client's futures (which could hide duplicates)."""
    orch = start()
    n = 5_000
    sock = raw(orch.address)
    for i in range(1, n + 1):
        sock.send_multipart(p.SubmitTask(id=i, task="add", payload=msgpack.packb([[i, 1], {}])).encode())
    replies: dict[int, list[p.TaskReply]] = {}
    while len(replies) < n:
        assert sock.poll(30_000), f"only {len(replies)} of {n} replies"
        reply = p.decode(sock.recv_multipart())
        assert isinstance(reply, p.TaskReply), reply
        replies.setdefault(reply.id, []).append(reply)
    # A ping sent now is answered after anything the orchestrator still had to send us.
    sock.send_multipart(p.Ping(nonce=1).encode())
    while True:
        assert sock.poll(30_000)
        msg = p.decode(sock.recv_multipart())
        if isinstance(msg, p.Pong):
            break
        replies.setdefault(msg.id, []).append(msg)
    assert sorted(replies) == list(range(1, n + 1))
    assert all(len(r) == 1 for r in replies.values()), "a task was answered twice"
    assert all(msgpack.unpackb(r[0].payload) == i + 1 for i, r in replies.items())


def test_a_full_queue_rejects_busy_at_once(start) -> None:
    orch = start("--queue-limit", "3", workers=1)
    with Client(orch.address) as client:
        running = client.submit("sleep", 1.0)
        # Readiness: the only worker has taken the sleep task.
        wait_until(lambda: client.ping()["idle_workers"] == 0, what="worker busy")
        queued = [client.submit("add", i, 1) for i in range(3)]
        with pytest.raises(BusyError) as err:
            client.call("add", 0, 0)
        assert err.value.reason == "busy"
        assert running.result(timeout=30) == 1.0
        assert [f.result(timeout=30) for f in queued] == [1, 2, 3]


def test_a_killed_worker_is_answered_and_replaced(start) -> None:
    orch = start(workers=1, app="tests.apps.lifecycle_app:app")
    with Client(orch.address) as client:
        victim = client.call("pid")
        hanging = client.submit("hang", 60.0)
        wait_until(lambda: client.ping()["idle_workers"] == 0, what="worker busy")
        os.kill(victim, 9)
        with pytest.raises(WorkerDiedError):
            hanging.result(timeout=30)
        orch.wait_for(r"Worker worker-002 ready")
        assert client.call("pid") != victim


def test_sigterm_leaves_no_process_and_no_socket_file(start) -> None:
    orch = start()
    with Client(orch.address) as client:
        assert client.call("add", 1, 1) == 2
    pids = orch.pids()
    assert len(pids) == 3, orch.log  # zygote + 2 workers
    run_dir = orch.run_dir / "run"
    assert (run_dir / "backend.sock").exists()
    assert (orch.run_dir / "frontend.sock").exists()
    orch.proc.send_signal(signal.SIGTERM)  # not orch.stop(), which also removes the test's temp dir
    assert orch.proc.wait(timeout=30) == 0
    for pid in pids:
        assert not _alive(pid), f"pid {pid} outlived the orchestrator"
    assert not run_dir.exists()
    assert not (orch.run_dir / "frontend.sock").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigterm_answers_queued_tasks_lets_running_ones_finish_then_stops(start) -> None:
    orch = start(workers=1, grace_period_s=30)
    with Client(orch.address) as client:
        running = client.submit("sleep", 0.5)
        wait_until(lambda: client.ping()["idle_workers"] == 0, what="worker busy")
        queued = [client.submit("add", i, i) for i in range(3)]
        wait_until(lambda: client.ping()["queue_depth"] == 3, what="tasks queued")
        orch.proc.send_signal(signal.SIGTERM)
        for fut in queued:
            with pytest.raises(ShuttingDownError):
                fut.result(timeout=10)
        orch.wait_for("Draining")
        with pytest.raises(DrainingError):
            client.call("add", 1, 1)
        assert running.result(timeout=30) == 0.5, "a running task finishes within the grace period"
    assert orch.proc.wait(timeout=30) == 0


def test_a_task_still_running_after_the_grace_period_is_answered(start) -> None:
    orch = start(workers=1, grace_period_s=0.5)
    with Client(orch.address) as client:
        running = client.submit("sleep", 60.0)
        wait_until(lambda: client.ping()["idle_workers"] == 0, what="worker busy")
        orch.proc.send_signal(signal.SIGTERM)
        with pytest.raises(WorkerDiedError, match="grace period"):
            running.result(timeout=30)
    assert orch.proc.wait(timeout=30) == 0


def test_tasks_queued_while_the_app_imports_are_answered_if_the_import_fails() -> None:
    orch = start_orchestrator(app="tests.apps.slow_broken_app:app", wait_ready=False)
    try:
        orch.wait_for("Accepting tasks")
        with Client(orch.address) as client:
            fut = client.submit("anything")
            with pytest.raises(ShuttingDownError):
                fut.result(timeout=30)
        assert orch.proc.wait(timeout=30) == 3
    finally:
        orch.stop()


def test_a_broken_app_exits_with_its_traceback_and_is_not_restarted() -> None:
    orch = start_orchestrator(app="tests.apps.broken_app:app", wait_ready=False)
    try:
        assert orch.proc.wait(timeout=30) == 3
        orch.wait_for("broken on purpose")
        assert "Traceback" in orch.log
        assert orch.log.count("Zygote") == 0
    finally:
        orch.stop()


def test_malformed_frames_get_a_clear_rejection_and_lose_nothing(start, raw) -> None:
    orch = start(workers=1)
    sock = raw(orch.address)
    cases = [
        [b"garbage"],
        [b"XX\x01\x01", b"\x80"],
        [p.header(p.MessageType.SUBMIT_TASK), msgpack.packb({"id": 5})],
        [p.header(p.MessageType.SUBMIT_TASK), b"\xc1", b"\x90"],
    ]
    for frames in cases:
        sock.send_multipart(frames)
        assert sock.poll(10_000), f"no answer to {frames!r}"
        reply = p.decode(sock.recv_multipart())
        assert isinstance(reply, p.TaskRejected) and reply.reason == "invalid", reply
        assert reply.message
    with Client(orch.address) as client:
        assert client.call("add", 1, 2) == 3


def test_an_oversized_payload_is_rejected(start) -> None:
    orch = start("--max-message-bytes", "10000", workers=1)
    with Client(orch.address) as client:
        with pytest.raises(PayloadTooLargeError):
            client.call("echo", b"x" * 20_000)
        assert client.call("echo", b"x" * 100) == b"x" * 100


def test_a_message_of_the_wrong_kind_is_invalid(start, raw) -> None:
    orch = start(workers=1)
    sock = raw(orch.address)
    sock.send_multipart([*p.Ping(nonce=1).encode()[:1], b"\x80"])
    assert sock.poll(10_000)
    assert isinstance(p.decode(sock.recv_multipart()), p.TaskRejected)
    sock.send_multipart(p.WorkerReady(worker_id="x", pid=1, credits=1, tasks=[]).encode())
    assert sock.poll(10_000)
    assert p.decode(sock.recv_multipart()).reason == "invalid"


def test_cancel_drops_a_queued_task(start, raw) -> None:
    orch = start(workers=1)
    sock = raw(orch.address)
    sock.send_multipart(p.SubmitTask(id=1, task="sleep", payload=msgpack.packb([[0.5], {}])).encode())
    sock.send_multipart(p.SubmitTask(id=2, task="add", payload=msgpack.packb([[1, 2], {}])).encode())
    sock.send_multipart(p.CancelTask(id=2).encode())
    replies = {}
    while len(replies) < 2:
        assert sock.poll(10_000)
        r = p.decode(sock.recv_multipart())
        replies[r.id] = r
    assert replies[2].status == "error" and replies[2].error.kind == "cancelled"
    assert replies[1].status == "ok"


def test_metrics_endpoint_reports_queue_outcomes_latency_and_workers(start) -> None:
    port = free_port()
    orch = start("--metrics", f"127.0.0.1:{port}")
    with Client(orch.address) as client:
        assert client.call("add", 1, 1) == 2
        with pytest.raises(TaskError):
            client.call("fail")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "neutrino_orchestrator_queue_depth 0" in body
    assert 'neutrino_orchestrator_tasks_total{outcome="ok"} 1' in body
    assert 'neutrino_orchestrator_tasks_total{outcome="task_error"} 1' in body
    assert "neutrino_orchestrator_queue_wait_seconds_count 2" in body
    assert 'neutrino_orchestrator_workers{state="idle"} 2' in body


def test_describe_returns_each_tasks_schemas(start) -> None:
    orch = start()
    with Client(orch.address) as client:
        catalog = client.describe(timeout_s=30)
    assert list(catalog) == ["add", "noop", "sleep", "cpu", "fail", "greet", "echo"]
    add = catalog["add"]
    assert add["params"] == {
        "additionalProperties": False,
        "properties": {"x": {"title": "X", "type": "integer"}, "y": {"title": "Y", "type": "integer"}},
        "required": ["x", "y"],
        "title": "add",
        "type": "object",
    }
    assert (add["result"], add["doc"], add["options"], add["http"]) == ({"type": "integer"}, "", {}, True)
    assert catalog["greet"]["result"] == {"type": "string"}, "async tasks describe what they return"
    assert catalog["fail"]["params"]["properties"]["message"]["default"] == "boom"
    assert catalog["noop"]["doc"] == "Does nothing: the benchmark task that measures pure dispatch overhead."
    assert re.search(r"Task catalog received from zygote \d+: 7 tasks", orch.log)


def test_the_catalog_is_forwarded_byte_for_byte(start, raw) -> None:
    from examples.quickstart.app import app

    orch = start()
    with Client(orch.address) as client:
        client.describe(timeout_s=30)  # until the zygote has reported it
    sock = raw(orch.address)
    sock.send_multipart(p.DescribeTasks(nonce=5).encode())
    assert sock.poll(10_000), "no answer to DescribeTasks"
    frames = sock.recv_multipart()
    reply = p.decode(frames)
    assert isinstance(reply, p.TaskCatalog)
    assert (reply.nonce, reply.ready, reply.tasks) == (5, True, list(app.tasks))
    # What the zygote packed, as this process packs it from the same app.
    assert frames[2] == msgpack.packb(app.catalog(), use_bin_type=True)


def test_describe_waits_while_the_app_imports(raw) -> None:
    orch = start_orchestrator(workers=1, app="tests.apps.slow_app:app", wait_ready=False)
    try:
        sock = raw(orch.address)
        sock.send_multipart(p.DescribeTasks(nonce=1).encode())
        assert sock.poll(10_000), "no answer to DescribeTasks"
        frames = sock.recv_multipart()
        assert p.decode(frames) == p.TaskCatalog(nonce=1, ready=False, tasks=[])
        assert len(frames) == 2, "no payload before the zygote reported its catalog"
        with Client(orch.address) as client:
            assert client.describe(timeout_s=30)["double"]["doc"] == "Twice n."
            assert client.call("double", 21) == 42
    finally:
        orch.stop()


def test_probes_say_live_and_ready_and_not_ready_while_draining(start) -> None:
    import urllib.error

    port = free_port()

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as err:
            return err.code

    orch = start("--metrics", f"127.0.0.1:{port}", workers=1, grace_period_s=30)
    assert (status("/healthz"), status("/readyz")) == (200, 200)
    with Client(orch.address) as client:
        running = client.submit("sleep", 1.0)
        wait_until(lambda: client.ping()["idle_workers"] == 0, what="worker busy")
        orch.proc.send_signal(signal.SIGTERM)
        orch.wait_for("Draining")
        assert (status("/healthz"), status("/readyz")) == (200, 503), "draining: alive, not ready for new work"
        assert running.result(timeout=30) == 1.0
    assert orch.proc.wait(timeout=30) == 0
