"""Server processes for the benchmarks: start each in its own session, stop every one by id.

Each server gets a new session (so Ctrl-C in the terminal reaches only the benchmark, which then
stops the servers itself) whose id is the server's pid; its descendants stay in that session even
when they make their own process group (the orchestrator puts its zygote in one). Stopping sends
SIGTERM to the server, waits, then SIGKILLs, pid by pid, whatever is left in its session, and
reports any process that outlived its parent (an orphan is a finding, not something to hide).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STOP_GRACE_S = 10.0  # the orchestrator drains on SIGTERM; an idle one should exit well within this
REAP_GRACE_S = 2.0  # after SIGKILL, how long to wait for the kernel to reap the server
ORPHAN_GRACE_S = 1.0  # how long the server's descendants may take to exit after it did


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON document."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_tcp_port() -> int:
    """An ephemeral port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_table() -> list[tuple[int, str, int, int]]:
    """(pid, state, ppid, session id) of every process, read from /proc (no external tools)."""
    table = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command name: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        table.append((int(entry.name), fields[0], int(fields[1]), int(fields[3])))
    return table


def session_members(sid: int) -> list[int]:
    """Pids of live processes in session `sid`."""
    return [pid for pid, state, _, session in _process_table() if session == sid and state != "Z"]


def session_cpu_s(sid: int) -> float:
    """CPU seconds (user + system, all threads) that the live processes of session `sid` have used:
    a server and every process it started, read from /proc (clock-tick resolution)."""
    return sum(process_cpu_s(pid) for pid in session_members(sid))


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process `pid` has used, from /proc (clock-tick
    resolution); 0.0 when it is gone (exited between a listing and the read)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (14, 15 of proc(5))


def children_of(ppid: int) -> list[int]:
    """Pids of the live children of `ppid`, in pid order."""
    return sorted(pid for pid, state, parent, _ in _process_table() if parent == ppid and state != "Z")


class Processes:
    """Tracks the servers a benchmark starts; `close()` (or leaving the `with`) stops all of them."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self.findings: list[str] = []

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> dict[str, Any]:
        """SIGTERM `proc`, wait up to `grace_s`, then SIGKILL its session. Returns how it went.

        `proc` stays tracked until it is reaped, so an interrupted stop is finished by `close()`."""
        started = time.perf_counter()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
            forced = False
        except subprocess.TimeoutExpired:
            forced = True
            self.findings.append(f"pid {proc.pid} ({Path(proc.args[0]).name}) ignored SIGTERM for {grace_s}s")
        if not forced:
            self._wait_session_empty(proc.pid, ORPHAN_GRACE_S)
        leftovers = self._kill_session(proc.pid)
        proc.wait(timeout=REAP_GRACE_S)
        if proc in self._procs:
            self._procs.remove(proc)
        return {
            "exit_code": proc.returncode,
            "stop_ms": round((time.perf_counter() - started) * 1000, 1),
            "forced_kill": forced,
            "orphans": leftovers,
        }

    @staticmethod
    def _wait_session_empty(sid: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling /proc: there is no event for "a non-child exited"

    def _kill_session(self, sid: int) -> list[int]:
        """SIGKILL whatever is left in the session of server `sid`; returns the pids besides the server."""
        members = session_members(sid)
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leftovers = [pid for pid in members if pid != sid]
        if leftovers:
            self.findings.append(f"session of pid {sid}: pids {leftovers} were still running after it stopped; killed")
        return leftovers

    def close(self) -> None:
        for proc in list(reversed(self._procs)):
            self.stop(proc, grace_s=REAP_GRACE_S)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
