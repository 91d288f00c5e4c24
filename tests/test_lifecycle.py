"""Worker lifecycle against the real binary and real workers: every submitted task ends in
exactly one reply, whatever happens to the workers (SPEC.md §6 rules 5-7)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import signal
from pathlib import Path

import pytest
from neutrino import (
    Client,
    ShuttingDownError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
    WorkerDiedError,
)

from .conftest import start_orchestrator, wait_until

APP = "tests.apps.lifecycle_app:app"


def busy(client: Client, workers_busy: int = 1) -> None:
    """Readiness: `workers_busy` workers hold a task."""

    def enough() -> bool:
        load = client.ping()
        return load["workers"] - load["idle_workers"] >= workers_busy

    wait_until(enough, what="worker busy")


def test_a_task_that_exits_the_worker_is_answered_and_the_worker_replaced(start) -> None:
    orch = start(workers=1, app=APP)
    with Client(orch.address) as client:
        with pytest.raises(WorkerDiedError, match="exit code 1") as err:
            client.call("crash")
        assert err.value.attempts == 1
        orch.wait_for(r"Worker worker-002 ready")
        assert client.call("add", 1, 2) == 3


def test_a_worker_killed_mid_task_is_retried_on_a_new_worker(start, tmp_path: Path) -> None:
    orch = start(workers=1, app=APP)
    marker = tmp_path / "first-attempt"
    with Client(orch.address) as client:
        fut = client.submit("hang_once", str(marker))
        wait_until(marker.exists, what="first attempt running")
        os.kill(int(marker.read_text()), signal.SIGKILL)
        second_pid = fut.result(timeout=30)
        assert second_pid != int(marker.read_text())
        assert fut.attempts == 2


def test_a_task_past_its_timeout_is_killed_and_answered_timeout(start) -> None:
    orch = start(workers=1, app=APP)
    with Client(orch.address) as client:
        first = client.call("pid")
        overrun = client.submit("slow", 30.0)  # the decorator's timeout is 0.5 s
        busy(client)
        queued = client.submit("add", 2, 2)  # waits behind it, survives the kill
        with pytest.raises(TaskTimeoutError, match="timeout") as err:
            overrun.result(timeout=30)
        assert err.value.kind == "timeout"
        assert queued.result(timeout=30) == 4
        assert client.call("pid") != first, "the overrunning worker was replaced"
        # A per-call timeout overrides the decorator's.
        with pytest.raises(TaskTimeoutError):
            client.submit_with("hang", (30.0,), timeout_s=0.3).result(timeout=30)
        assert client.submit_with("slow", (0.8,), timeout_s=5.0).result(timeout=30) == 0.8


def test_retry_on_and_retry_requests_count_attempts(start, tmp_path: Path) -> None:
    orch = start(workers=1, app=APP)
    with Client(orch.address) as client:
        fut = client.submit("flaky", str(tmp_path / "a"), 2)
        assert fut.result(timeout=30) == 3
        assert fut.attempts == 3
        with pytest.raises(TaskError, match="attempt 4 failed") as err:
            client.call("flaky", str(tmp_path / "b"), 10)
        assert err.value.attempts == 4, "retries=3: four attempts in all"
        later = client.submit("retry_later", str(tmp_path / "c"))
        assert later.result(timeout=30) == "done"
        assert later.attempts == 2


def test_a_worker_over_its_rss_limit_finishes_its_task_and_is_recycled(start) -> None:
    orch = start("--max-worker-rss-mb", "120", "--heartbeat-interval-ms", "100", workers=1, app=APP)
    with Client(orch.address) as client:
        leaky = client.call("pid")
        assert client.call("leak", 200) == 25, "the task that leaked still gets its reply"
        orch.wait_for(r"Recycling worker worker-001 \(max_rss\)")
        wait_until(lambda: client.call("pid") != leaky, what="new worker serving")


def test_ten_thousand_tasks_with_recycling_every_fifty(start) -> None:
    orch = start("--max-tasks-per-worker", "50", workers=2, app=APP)
    n = 10_000
    with Client(orch.address) as client:
        futures = {client.submit("add", i, 1): i for i in range(n)}
        done = 0
        for fut in cf.as_completed(futures, timeout=300):
            assert fut.result() == futures[fut] + 1
            done += 1
        assert done == n
    recycles = len(re.findall(r"Recycling worker \S+ \(max_tasks\)", orch.log))
    # A retiring worker still answers the few short tasks pipelined to it (window 8), so each
    # worker serves 50 to 58 tasks; a standby takes each one's place at once.
    assert n // 58 - 2 <= recycles <= n // 50, recycles
    assert "takes its place" in orch.log


def test_a_ready_standby_killed_is_replaced_at_once_not_backed_off(start) -> None:
    orch = start("--max-tasks-per-worker", "1000", workers=1, app=APP)
    wait_until(lambda: re.search(r"Worker (\S+) is the standby", orch.log) is not None, what="a ready standby")
    standby = re.search(r"Worker (\S+) is the standby", orch.log)[1]  # type: ignore[index]
    pid = int(re.search(rf"Worker {re.escape(standby)} connected \(pid=(\d+)\)", orch.log)[1])  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: orch.log.count("is the standby") >= 2, what="a new standby")
    assert "before it was ready" not in orch.log, "a ready standby's death is not a start-up failure"
    with Client(orch.address) as client:
        assert client.call("add", 1, 2) == 3


def test_sigterm_with_a_thousand_queued_tasks_answers_each_once(start) -> None:
    orch = start(workers=2, app=APP, grace_period_s=30)
    with Client(orch.address) as client:
        running = [client.submit("hang", 3.0) for _ in range(2)]
        busy(client, 2)
        queued = [client.submit("add", i, i) for i in range(1_000)]
        wait_until(lambda: client.ping()["queue_depth"] == 1_000, what="1,000 queued")
        orch.proc.send_signal(signal.SIGTERM)
        outcomes = {"ok": 0, "shutting_down": 0}
        for fut in queued:
            try:
                fut.result(timeout=30)
                outcomes["ok"] += 1
            except ShuttingDownError:
                outcomes["shutting_down"] += 1
        assert sum(outcomes.values()) == 1_000
        assert outcomes["shutting_down"] == 1_000, "queued tasks are answered at once, never run"
        assert [f.result(timeout=30) for f in running] == [None, None], "running tasks finish"
    assert orch.proc.wait(timeout=30) == 0


def test_cancel_a_queued_and_a_running_task(start) -> None:
    orch = start(workers=1, app=APP)
    with Client(orch.address) as client:
        victim = client.call("pid")
        running = client.submit("hang", 60.0)
        busy(client)
        queued = client.submit("add", 1, 1)
        wait_until(lambda: client.ping()["queue_depth"] == 1, what="queued")
        client.cancel(queued.task_id)
        with pytest.raises(TaskCancelledError):
            queued.result(timeout=30)
        client.cancel(running.task_id)
        with pytest.raises(TaskCancelledError):
            running.result(timeout=30)
        assert client.call("pid") != victim, "the interrupted worker was replaced"


def test_a_hung_worker_is_found_by_its_missing_heartbeats(start) -> None:
    orch = start("--heartbeat-interval-ms", "100", workers=1, app=APP)
    with Client(orch.address) as client:
        stuck = client.call("pid")
        fut = client.submit("hang", 60.0)
        busy(client)
        os.kill(stuck, signal.SIGSTOP)  # frozen: neither the task nor the heartbeat thread runs
        try:
            with pytest.raises(WorkerDiedError, match="heartbeat"):
                fut.result(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # normally killed by the orchestrator
                os.kill(stuck, signal.SIGCONT)
        assert client.call("add", 1, 1) == 2


def test_a_dead_zygote_is_restarted(start) -> None:
    orch = start(workers=1, app=APP)
    zygote = int(re.search(r"Zygote ready \(pid=(\d+)", orch.log)[1])
    with Client(orch.address) as client:
        catalog = client.describe(timeout_s=30)
        os.kill(zygote, signal.SIGKILL)
        orch.wait_for(r"zygote .*died; restarting", timeout=30)
        orch.wait_for(r"Worker worker-002 ready", timeout=60)
        assert client.call("add", 2, 3) == 5
        restarted = int(re.findall(r"Zygote ready \(pid=(\d+)", orch.log)[-1])
        orch.wait_for(rf"Task catalog received from zygote {restarted}:", timeout=30)
        assert client.describe(timeout_s=30) == catalog


def test_workers_that_crash_at_start_are_backed_off_not_restart_looped(tmp_path: Path) -> None:
    orch = start_orchestrator(
        "--start-timeout",
        "30",
        workers=1,
        app="tests.apps.crash_at_fork_app:app",
        wait_ready=False,
        env={"NEUTRINO_TEST_MARKER": str(tmp_path / "forks")},
    )
    try:
        orch.wait_for(r"3 time\(s\) in a row before it was ready; next replacement in", timeout=30)
        delays = re.findall(r"in a row before it was ready; next replacement in ([\d.]+)ms", orch.log)
        assert delays[:3] == ["100.0", "200.0", "400.0"], "each crash doubles the wait"
        assert orch.proc.poll() is None, "backing off, not giving up or looping"
    finally:
        orch.stop()


def test_a_task_calling_sys_exit_does_not_stop_the_orchestrator(start) -> None:
    orch = start(workers=1, app=APP)
    with Client(orch.address) as client:
        with pytest.raises(WorkerDiedError, match="exit code 3"):
            client.call("exit_with", 3)  # the app-import code, from a task: a worker death like any other
        assert client.call("add", 1, 1) == 2
    assert orch.proc.poll() is None


def test_an_elastic_pool_grows_under_load_and_shrinks_when_idle(start) -> None:
    orch = start("--min-workers", "1", "--max-workers", "3", "--worker-idle-timeout", "0.5", workers=1, app=APP)
    with Client(orch.address) as client:
        futures = [client.submit("hang", 0.3) for _ in range(12)]
        orch.wait_for(r"Growing the pool to 3 workers", timeout=30)
        for fut in futures:
            fut.result(timeout=60)
        orch.wait_for(r"Shrinking the pool to 1 workers", timeout=30)
        assert client.call("add", 1, 1) == 2


def test_sighup_reloads_pool_size_and_limits_from_the_config_file(start, tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text("workers = 1\nmax_workers = 4\n")
    orch = start("--config", str(config), workers=None, app=APP)
    config.write_text("workers = 2\nmax_workers = 4\nmax_tasks_per_worker = 5\n")
    orch.proc.send_signal(signal.SIGHUP)
    orch.wait_for(r"SIGHUP: reloaded: 2 workers", timeout=30)
    orch.wait_for(r"Worker worker-002 ready", timeout=30)
    with Client(orch.address) as client:
        for i in range(12):
            assert client.call("add", i, 0) == i
    orch.wait_for(r"Recycling worker \S+ \(max_tasks\)", timeout=30)
