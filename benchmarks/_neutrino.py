"""Neutrino under test: start the real orchestrator (which forks the workers), drive it with `neutrino.Client`.

The orchestrator's stderr goes to a log file so a full pipe can never stall it; `log_problems`
reads back the lines worth reporting.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _procs import Processes, free_tcp_port, log

APP = "examples.quickstart.app:app"
READY_TIMEOUT_S = 60.0
FIRST_RESULT_TIMEOUT_S = 30.0
BURST_TIMEOUT_S = 30.0  # per future, the first one that overruns fails the burst


class Orchestrator:
    """One orchestrator process on a fresh loopback port, its stderr captured to `log_path`."""

    def __init__(
        self,
        procs: Processes,
        binary: Path,
        repo: Path,
        workers: int,
        window: int | None,
        log_path: Path,
        app: str = APP,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ):
        """`extra_args` go to the orchestrator as they are; `env` (default: ours) reaches the zygote and workers."""
        self.endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.log_path = log_path
        argv = [str(binary), "--app", app, "--workers", str(workers), "--frontend", self.endpoint]
        argv += ["--python", str(repo / ".venv" / "bin" / "python")]
        if window is not None:
            argv += ["--window", str(window)]
        self.argv = [*argv, *extra_args]
        self._procs = procs
        with log_path.open("ab") as stderr:
            self.started = time.perf_counter()
            self.proc = procs.spawn(
                self.argv, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )

    def stop(self) -> dict[str, Any]:
        return self._procs.stop(self.proc)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"orchestrator exited with code {self.proc.returncode}; see {self.log_path}")


def log_problems(log_path: Path, limit: int = 20) -> list[str]:
    """Lines of the orchestrator's log at WARN or above, or that look like a Python traceback."""
    markers = ("WARN", "ERROR", "Traceback", "Error:", "panicked")
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    return [line for line in lines if any(m in line for m in markers)][:limit]


def fork_to_ready_ms(log_path: Path) -> dict[str, Any]:
    """Worker start times the orchestrator logged ("ready! (X ms from fork request)"), all runs."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    values = sorted(float(ms) for ms in re.findall(r"ready! \(([\d.]+) ms from fork request\)", text))
    if not values:
        return {"error": f"no worker start times in {log_path}"}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "max": values[-1],
        "note": "Fork request to WorkerReady, workers forked together at each start",
    }


def wait_ready(client: Any, orch: Orchestrator, workers: int, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Ping until `workers` workers are connected; returns the seconds it took."""
    deadline = time.monotonic() + timeout_s
    connected = 0
    while True:
        orch.check_alive()
        with contextlib.suppress(TimeoutError):  # the frontend may not be bound yet
            connected = client.ping(timeout_s=1.0)["workers"]
        if connected >= workers:
            return time.perf_counter() - orch.started
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {connected} of {workers} workers ready after {timeout_s}s")
        time.sleep(0.005)  # a polling interval, not a readiness guess: the loop exits on the signal


def first_result_ms(procs: Processes, args: dict[str, Any], runs: int) -> dict[str, Any]:
    """Time from orchestrator Popen to the first `noop` result of a client that submits at once."""
    from neutrino import Client

    values, orphans = [], []
    for run in range(runs):
        orch = Orchestrator(procs, **args)
        client = Client(orch.endpoint)
        try:
            client.submit("noop").result(timeout=FIRST_RESULT_TIMEOUT_S)
            values.append(round((time.perf_counter() - orch.started) * 1000, 1))
        finally:
            client.close()
            stopped = orch.stop()
            orphans += stopped["orphans"]
        log(f"neutrino first result #{run + 1}: {values[-1]} ms (stop: {stopped})")
    return {"median_ms": statistics.median(values), "runs_ms": values, "orphans": orphans}


class CountingHandler(logging.Handler):
    """Counts the client's warnings (a duplicate or unknown reply shows up there)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def burst(client: Any, count: int) -> dict[str, Any]:
    """Submit `count` noop tasks without waiting, then wait for every future."""
    handler = CountingHandler()
    client_log = logging.getLogger("neutrino")
    client_log.addHandler(handler)
    try:
        started = time.perf_counter()
        futures = [client.submit("noop") for _ in range(count)]
        submitted = time.perf_counter() - started
        failures = [exc for fut in futures if (exc := fut.exception(timeout=BURST_TIMEOUT_S)) is not None]
        elapsed = time.perf_counter() - started
    finally:
        client_log.removeHandler(handler)
    distinct_ids = len({fut.task_id for fut in futures})
    return {
        "elapsed_s": elapsed,
        "all_replied_once": not failures and not handler.records and distinct_ids == count,
        "submit_loop_s": round(submitted, 4),
        "failed": len(failures),
        "first_failure": repr(failures[0]) if failures else None,
        "distinct_task_ids": distinct_ids,
        "client_warnings": handler.records[:5],
        "client_warning_count": len(handler.records),
    }


def map_burst(client: Any, count: int) -> dict[str, Any]:
    """`count` noop tasks through `client.starmap` (no Future per task, a window in flight),
    every result checked: one per item, in order, each None."""
    handler = CountingHandler()
    client_log = logging.getLogger("neutrino")
    client_log.addHandler(handler)
    try:
        started = time.perf_counter()
        results = sum(1 for result in client.starmap("noop", itertools.repeat((), count)) if result is None)
        elapsed = time.perf_counter() - started
    finally:
        client_log.removeHandler(handler)
    return {
        "elapsed_s": elapsed,
        "all_replied_once": results == count and not handler.records,
        "results": results,
        "client_warnings": handler.records[:5],
    }
