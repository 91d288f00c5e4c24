"""Component tests: the real zygote subprocess against a fake orchestrator (control listener + ROUTER)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import msgpack
import pytest
from neutrino_protocol import (
    Fork,
    Forked,
    Shutdown,
    TaskAssignment,
    TaskOptions,
    TaskResult,
    WorkerExited,
    WorkerReady,
    ZygoteCatalog,
    ZygoteFailed,
    ZygoteReady,
)
from worker_harness import APPS_DIR, REPO_ROOT, FakeOrchestrator, pid_alive, pid_gone

GOOD_TASKS = {
    *("add", "greet", "fail", "die", "unserializable", "sleep", "gc_enabled", "noop"),
    *("spin", "retry_later", "flaky", "exit_with"),
}


def result_of(orch: FakeOrchestrator, worker_id: str, task_id: int) -> TaskResult:
    identity, msg = orch.recv_backend()
    assert identity == worker_id
    assert isinstance(msg, TaskResult), msg
    assert msg.task_id == task_id
    return msg


def value(result: TaskResult) -> Any:
    assert result.status == "ok", result.error
    assert result.payload is not None
    return msgpack.unpackb(result.payload, raw=False)


def test_ready_lists_the_tasks(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start()
    ready = orchestrator.expect(ZygoteReady)
    assert orchestrator.proc is not None and ready.pid == orchestrator.proc.pid
    assert set(ready.tasks) == GOOD_TASKS
    assert ready.import_ms >= 0


def test_ready_carries_each_tasks_options(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start()
    options = orchestrator.expect(ZygoteReady).task_options
    assert options is not None and set(options) == GOOD_TASKS
    assert options["flaky"] == TaskOptions(timeout_s=5.0, retries=2, retry_backoff_s=0.5, retry_backoff_max_s=10.0)
    assert options["retry_later"] == TaskOptions(
        timeout_s=None, retries=3, retry_backoff_s=1.0, retry_backoff_max_s=60.0
    )
    assert options["add"] == TaskOptions(timeout_s=None, retries=0, retry_backoff_s=1.0, retry_backoff_max_s=60.0)


def test_fork_two_workers(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready("good_app:app", APPS_DIR, "--credits", "3")
    pids = orchestrator.fork("w-1", "w-2")
    assert len(set(pids.values())) == 2
    assert orchestrator.proc is not None and orchestrator.proc.pid not in pids.values()
    # fork() checked ids and pids; check credits and tasks on a third worker
    orchestrator.send_control(Fork(["w-3"]))
    assert orchestrator.expect(Forked).worker_id == "w-3"
    identity, ready = orchestrator.recv_backend()
    assert isinstance(ready, WorkerReady) and identity == "w-3"
    assert ready.credits == 3 and set(ready.tasks) == GOOD_TASKS


def test_sync_and_async_results(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    orchestrator.fork("w-1", "w-2")
    orchestrator.assign("w-1", 1, "add", 1, y=2)
    assert value(result_of(orchestrator, "w-1", 1)) == 3
    orchestrator.assign("w-2", 2, "greet", "Ada")
    result = result_of(orchestrator, "w-2", 2)
    assert value(result) == "Hello, Ada!"
    assert result.run_us is not None
    orchestrator.assign("w-1", 3, "gc_enabled")
    assert value(result_of(orchestrator, "w-1", 3)) is True


def test_retry_requests_carry_the_retry_flag(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    orchestrator.fork("w-1")
    cases: list[tuple[str, tuple[Any, ...], str, str, float | None]] = [
        ("retry_later", (2.5, "rate limited"), "Retry", "rate limited", 2.5),
        ("retry_later", (), "Retry", "retry requested", None),
        ("flaky", ("connection",), "ConnectionError", "connection trouble", None),  # in its retry_on
    ]
    for task_id, (task, args, ename, evalue, delay) in enumerate(cases, start=1):
        orchestrator.assign("w-1", task_id, task, *args)
        result = result_of(orchestrator, "w-1", task_id)
        assert result.status == "error" and result.error is not None
        assert (result.error.kind, result.error.ename, result.error.evalue) == ("task_error", ename, evalue)
        assert result.error.traceback is not None and f"{ename}: {evalue}" in result.error.traceback
        assert (result.retry, result.retry_delay_s) == (True, delay)
    # An exception outside retry_on answers the task at once, without the flag.
    orchestrator.assign("w-1", 9, "flaky", "value")
    result = result_of(orchestrator, "w-1", 9)
    assert result.error is not None and result.error.ename == "ValueError"
    assert (result.retry, result.retry_delay_s) == (None, None)


def test_window_runs_in_arrival_order(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    orchestrator.fork("w-1")
    for task_id in range(1, 9):
        orchestrator.assign("w-1", task_id, "add", task_id, 100)
    for task_id in range(1, 9):
        assert value(result_of(orchestrator, "w-1", task_id)) == task_id + 100


def test_typed_errors(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    orchestrator.fork("w-1")
    cases = [
        ("nope", (), "unknown_task"),
        ("add", (1,), "bad_arguments"),
        ("fail", ("kaput",), "task_error"),
        ("unserializable", (), "result_not_serializable"),
    ]
    for task_id, (task, args, kind) in enumerate(cases, start=1):
        orchestrator.assign("w-1", task_id, task, *args)
        result = result_of(orchestrator, "w-1", task_id)
        assert result.status == "error" and result.error is not None
        assert result.error.kind == kind
    # and the worker is still serving
    orchestrator.assign("w-1", 99, "add", 2, 2)
    assert value(result_of(orchestrator, "w-1", 99)) == 4


def test_malformed_and_unknown_backend_messages_are_skipped(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    orchestrator.fork("w-1")
    router = orchestrator.router
    router.send_multipart([b"w-1", b"garbage"])
    router.send_multipart([b"w-1", b"NT\x01\x11", b"\xc1", b""])  # bad meta
    router.send_multipart([b"w-1", b"NT\x01\x7f", b"\x80"])  # unknown type
    router.send_multipart([b"w-1", *TaskAssignment(5, "add", 1, payload=msgpack.packb([[1, 1], {}])).encode()])
    assert value(result_of(orchestrator, "w-1", 5)) == 2


def test_sigkill_is_reported_as_signal_9(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1", "w-2")
    os.kill(pids["w-2"], signal.SIGKILL)
    exited = orchestrator.expect(WorkerExited)
    assert (exited.worker_id, exited.pid, exited.signal, exited.exit_code) == ("w-2", pids["w-2"], 9, None)
    # the other worker is unaffected
    orchestrator.assign("w-1", 1, "add", 1, 1)
    assert value(result_of(orchestrator, "w-1", 1)) == 2


def test_a_worker_whose_backend_connection_closes_exits_4_as_a_death(orchestrator: FakeOrchestrator) -> None:
    """It never reconnects (SPEC §2): nothing could reach it; exiting makes the orchestrator replace it."""
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1")
    orchestrator.router.close()  # the orchestrator's backend going away
    exited = orchestrator.expect(WorkerExited)
    assert (exited.worker_id, exited.pid, exited.exit_code, exited.signal) == ("w-1", pids["w-1"], 4, None)
    assert exited.error is None, "it had sent WorkerReady"
    assert "backend connection lost" in orchestrator.log()


def test_a_worker_connects_itself_when_the_zygote_cannot_open_its_connection_first(run_dir: Path) -> None:
    """The zygote opens each worker's connection before the fork only when that cannot block (a
    Unix socket); on tcp:// the worker connects itself, and serves all the same."""
    orch = FakeOrchestrator(run_dir, backend="tcp://127.0.0.1:*")
    try:
        orch.start_ready()
        orch.fork("w-1")
        orch.assign("w-1", 1, "add", 2, 3)
        assert value(result_of(orch, "w-1", 1)) == 5
        assert "worker w-1 connects itself" in orch.log()
    finally:
        orch.close()


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
def test_exit_code_is_reported_and_a_ready_worker_reports_no_start_up_error(
    orchestrator: FakeOrchestrator, code: int
) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1")
    orchestrator.assign("w-1", 1, "die", code)
    exited = orchestrator.expect(WorkerExited)
    assert (exited.worker_id, exited.pid, exited.exit_code, exited.signal) == ("w-1", pids["w-1"], code, None)
    assert exited.error is None, "it sent WorkerReady: whatever its code, this is a death, not a start-up failure"


def test_a_worker_that_fails_to_start_says_why(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready("broken_worker_app:app")
    orchestrator.send_control(Fork(["w-1"]))
    forked = orchestrator.expect(Forked)
    exited = orchestrator.expect(WorkerExited)
    assert (exited.worker_id, exited.pid) == ("w-1", forked.pid)
    assert exited.error is not None
    assert (exited.error.kind, exited.error.ename) == ("worker_start_error", "OSError")
    assert exited.error.evalue == "no backend connection for this worker (broken on purpose)"
    assert exited.error.traceback is not None and "_connect" in exited.error.traceback
    assert not orchestrator.router.poll(100), "it never sent WorkerReady"
    # The zygote keeps serving: the next worker fails the same way, and says so again.
    orchestrator.send_control(Fork(["w-2"]))
    assert orchestrator.expect(Forked).worker_id == "w-2"
    again = orchestrator.expect(WorkerExited)
    assert again.worker_id == "w-2" and again.error is not None


def test_sys_exit_in_a_task_exits_with_its_code(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1", "w-2", "w-3")
    for task_id, (worker_id, arg, status) in enumerate([("w-1", 3, 3), ("w-2", None, 0), ("w-3", "why", 1)]):
        orchestrator.assign(worker_id, task_id, "exit_with", arg)
        exited = orchestrator.expect(WorkerExited)
        assert (exited.worker_id, exited.pid, exited.exit_code) == (worker_id, pids[worker_id], status)
        assert exited.error is None


def test_other_protocol_version_exits_worker_with_4(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1")
    head, *rest = TaskAssignment(5, "add", 1, payload=msgpack.packb([[1, 1], {}])).encode()
    orchestrator.router.send_multipart([b"w-1", head[:2] + b"\x02" + head[3:], *rest])
    exited = orchestrator.expect(WorkerExited)
    assert (exited.worker_id, exited.pid, exited.exit_code, exited.signal) == ("w-1", pids["w-1"], 4, None)
    assert "the orchestrator speaks another protocol version" in orchestrator.log()


@pytest.mark.parametrize("graceful", [True, False])
def test_backend_shutdown_exits_worker_cleanly(orchestrator: FakeOrchestrator, graceful: bool) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1")
    orchestrator.send_backend("w-1", Shutdown(graceful=graceful))
    exited = orchestrator.expect(WorkerExited)
    assert (exited.pid, exited.exit_code, exited.signal) == (pids["w-1"], 0, None)


def test_graceful_backend_shutdown_answers_held_assignments_first(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1")
    orchestrator.assign("w-1", 1, "sleep", 0.2)  # still running when the Shutdown arrives
    orchestrator.assign("w-1", 2, "add", 1, 2)
    orchestrator.send_backend("w-1", Shutdown(graceful=True))
    assert value(result_of(orchestrator, "w-1", 1)) == 0.2
    assert value(result_of(orchestrator, "w-1", 2)) == 3
    exited = orchestrator.expect(WorkerExited)
    assert (exited.worker_id, exited.pid, exited.exit_code, exited.signal) == ("w-1", pids["w-1"], 0, None)


@pytest.mark.parametrize(("graceful", "sig"), [(True, signal.SIGTERM), (False, signal.SIGKILL)])
def test_shutdown_stops_workers_and_exits_0(orchestrator: FakeOrchestrator, graceful: bool, sig: int) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1", "w-2")
    orchestrator.send_control(Shutdown(graceful=graceful))
    exits = {orchestrator.expect(WorkerExited).worker_id: None for _ in pids}
    assert set(exits) == set(pids)
    assert orchestrator.wait_exit() == 0
    assert not any(pid_alive(pid) for pid in pids.values())


def test_shutdown_reports_each_worker_signal(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1")
    orchestrator.send_control(Shutdown(graceful=True))
    exited = orchestrator.expect(WorkerExited)
    assert (exited.pid, exited.signal) == (pids["w-1"], signal.SIGTERM)


def test_sigterm_to_zygote_is_a_graceful_shutdown(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1")
    assert orchestrator.proc is not None
    orchestrator.proc.send_signal(signal.SIGINT)  # ignored: the orchestrator coordinates shutdown
    orchestrator.proc.send_signal(signal.SIGTERM)
    assert orchestrator.expect(WorkerExited).pid == pids["w-1"]
    assert orchestrator.wait_exit() == 0


def test_lost_control_link_kills_workers_and_exits_4(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1", "w-2")
    orchestrator.close_control()
    assert orchestrator.wait_exit() == 4
    assert not any(pid_alive(pid) for pid in pids.values())


def test_workers_die_with_a_killed_zygote(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    pids = orchestrator.fork("w-1", "w-2")
    assert orchestrator.proc is not None
    orchestrator.proc.kill()  # SIGKILL: the zygote cannot reap or signal anyone
    orchestrator.wait_exit()
    assert all(pid_gone(pid) for pid in pids.values())


def test_broken_app_reports_zygote_failed_and_exits_3(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start("broken_app:app")
    failed = orchestrator.expect(ZygoteFailed)
    assert failed.error.kind == "app_import_error"
    assert failed.error.ename == "RuntimeError"
    assert failed.error.evalue == "this app is broken on purpose"
    assert failed.error.traceback is not None and "broken_app.py" in failed.error.traceback
    assert orchestrator.wait_exit() == 3
    assert "RuntimeError: this app is broken on purpose" in orchestrator.log()


@pytest.mark.parametrize(
    ("app", "ename"),
    [
        ("no_such_module:app", "ModuleNotFoundError"),
        ("good_app:missing", "AttributeError"),
        ("not_an_app:app", "TypeError"),
        ("good_app", "ValueError"),
    ],
)
def test_unloadable_app_reports_zygote_failed(orchestrator: FakeOrchestrator, app: str, ename: str) -> None:
    orchestrator.start(app)
    failed = orchestrator.expect(ZygoteFailed)
    assert (failed.error.kind, failed.error.ename) == ("app_import_error", ename)
    assert orchestrator.wait_exit() == 3


@pytest.mark.parametrize(
    ("app", "app_dir"),
    [("examples.quickstart.app:app", REPO_ROOT), ("app:app", REPO_ROOT / "examples" / "quickstart")],
)
def test_quickstart_app_serves(orchestrator: FakeOrchestrator, app: str, app_dir: Any) -> None:
    orchestrator.start(app, app_dir)
    ready = orchestrator.expect(ZygoteReady)
    assert set(ready.tasks) == {"add", "noop", "sleep", "cpu", "fail", "greet", "echo"}
    orchestrator.fork("w-1")
    calls: list[tuple[str, tuple[Any, ...], Any]] = [
        ("add", (2, 3), 5),
        ("noop", (), None),
        ("cpu", (4,), 14),
        ("greet", ("Neutrino",), "Hello, Neutrino!"),
        ("echo", (b"\x01\x02",), b"\x01\x02"),
        ("sleep", (0.0,), 0.0),
    ]
    for task_id, (task, args, expected) in enumerate(calls, start=1):
        orchestrator.assign("w-1", task_id, task, *args)
        assert value(result_of(orchestrator, "w-1", task_id)) == expected
    orchestrator.assign("w-1", 100, "fail")
    error = result_of(orchestrator, "w-1", 100).error
    assert error is not None and (error.kind, error.ename, error.evalue) == ("task_error", "ValueError", "boom")


def test_catalog_comes_after_the_first_forks(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    orchestrator.send_control(Fork(["w-1", "w-2"]))
    # Served before the catalog is built: it must not delay the first workers.
    assert [orchestrator.recv_control() for _ in range(2)] == [Forked("w-1", ANY), Forked("w-2", ANY)]
    catalog = orchestrator.expect(ZygoteCatalog)
    assert set(catalog.tasks) == GOOD_TASKS and catalog.build_ms > 0
    assert catalog.payload is not None
    entries = msgpack.unpackb(catalog.payload, raw=False)
    assert list(entries) == catalog.tasks
    assert entries["add"]["params"]["required"] == ["x", "y"]
    assert entries["add"]["result"] == {"type": "integer"}
    assert entries["flaky"]["options"]["retries"] == 2
    assert entries["spin"]["doc"].startswith("Pure-Python CPU work")
    # the workers forked before it are unaffected, and later forks still work
    ready = [orchestrator.recv_backend() for _ in range(2)]
    assert {identity for identity, msg in ready if isinstance(msg, WorkerReady)} == {"w-1", "w-2"}
    orchestrator.assign("w-1", 1, "add", 1, 2)
    assert value(result_of(orchestrator, "w-1", 1)) == 3
    orchestrator.fork("w-3")


def test_the_catalog_is_built_outside_the_zygote(orchestrator: FakeOrchestrator) -> None:
    """pydantic and the schemas stay out of the zygote, so no worker forked later copies them."""
    orchestrator.start_ready()
    orchestrator.fork("w-1")
    catalog = orchestrator.expect(ZygoteCatalog)
    assert set(catalog.tasks) == GOOD_TASKS
    assert orchestrator.proc is not None
    maps = Path(f"/proc/{orchestrator.proc.pid}/maps").read_text()
    assert "pydantic" not in maps, "the zygote imported pydantic (its compiled core is mapped)"
    orchestrator.fork("w-2")
    orchestrator.assign("w-2", 1, "add", 2, 3)
    assert value(result_of(orchestrator, "w-2", 1)) == 5


def test_catalog_without_forks_comes_within_a_second(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready()
    catalog = orchestrator.expect(ZygoteCatalog, timeout=5)
    assert set(catalog.tasks) == GOOD_TASKS


def test_a_catalog_that_cannot_be_built_is_sent_empty(orchestrator: FakeOrchestrator) -> None:
    orchestrator.start_ready("bad_catalog_app:app")
    orchestrator.fork("w-1")
    catalog = orchestrator.expect(ZygoteCatalog)
    assert (catalog.tasks, catalog.payload) == ([], b"\x80")
    assert "RuntimeError: no schemas today" in orchestrator.log()
    orchestrator.assign("w-1", 1, "add", 2, 2)
    assert value(result_of(orchestrator, "w-1", 1)) == 4
