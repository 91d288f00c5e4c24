"""The zygote's table of live workers: reaping them by pid and stopping them.

Reaping asks about each known pid (`waitpid(pid, WNOHANG)`), never `waitpid(-1)`: user code in
the zygote may have children of its own that are not ours to collect. Each worker's start-up
report pipe (startup.py) is read when it is reaped, into its `WorkerExited.error`.
"""

from __future__ import annotations

import contextlib
import logging
import os

from neutrino_protocol import WorkerExited

from .startup import read_report

log = logging.getLogger("neutrino.zygote")


class Children:
    def __init__(self) -> None:
        self._by_pid: dict[int, tuple[str, int]] = {}  # pid -> (worker id, read end of its report pipe)

    def __len__(self) -> int:
        return len(self._by_pid)

    def add(self, pid: int, worker_id: str, report_fd: int) -> None:
        self._by_pid[pid] = (worker_id, report_fd)

    def pids(self) -> list[int]:
        return list(self._by_pid)

    def report_fds(self) -> list[int]:
        """The zygote's ends of the report pipes, which a new child must close."""
        return [fd for _, fd in self._by_pid.values()]

    def reap(self) -> list[WorkerExited]:
        """Collect every worker that has exited, without blocking."""
        exits = []
        for pid in list(self._by_pid):
            exited = self._wait(pid, os.WNOHANG)
            if exited is not None:
                exits.append(exited)
        return exits

    def reap_all(self) -> list[WorkerExited]:
        """Block until every worker has exited (call after SIGKILL)."""
        exits = []
        for pid in list(self._by_pid):
            exited = self._wait(pid, 0)
            if exited is not None:
                exits.append(exited)
        return exits

    def signal_all(self, sig: int) -> None:
        for pid in self._by_pid:
            # Unreaped workers are at worst zombies, which accept signals; this only guards odd races.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait(self, pid: int, flags: int) -> WorkerExited | None:
        try:
            got, status = os.waitpid(pid, flags)
        except ChildProcessError:
            # Someone else reaped it (user code calling waitpid(-1)); its status is lost.
            log.warning("worker pid %d was reaped by someone else; exit status unknown", pid)
            worker_id, report_fd = self._by_pid.pop(pid)
            return WorkerExited(worker_id, pid, error=read_report(report_fd))
        if got == 0:
            return None
        worker_id, report_fd = self._by_pid.pop(pid)
        error = read_report(report_fd)
        if os.WIFSIGNALED(status):
            return WorkerExited(worker_id, pid, signal=os.WTERMSIG(status), error=error)
        return WorkerExited(worker_id, pid, exit_code=os.WEXITSTATUS(status), error=error)
