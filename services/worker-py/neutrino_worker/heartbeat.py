"""The worker's heartbeat: a daemon thread that tells the orchestrator this worker is alive, even
while a task keeps the main thread busy (SPEC.md §4.3 `Heartbeat`).

The thread opens a second backend connection of its own (a zmtp.py DEALER: connections are not
shared between threads), with routing id `<worker_id>/hb`, and sends
`Heartbeat(worker_id, rss_kb)` every interval, the first one interval after start: `WorkerReady`
already told the orchestrator the worker is alive, and a worker recycled within its first
interval (every few milliseconds, under `--max-tasks-per-worker` with short tasks) then never
opens the connection. The main thread never touches it: the per-task path takes no lock and pays
nothing for it.

Why it keeps beating through a long CPU-bound task: when another thread waits for the GIL,
CPython makes the running thread hand it over every switch interval (`sys.getswitchinterval()`,
5 ms by default), so this thread runs within milliseconds of waking up. That holds while the task
runs Python code, or C code that releases the GIL (I/O, sleeps, numpy's big kernels). C code that
keeps the GIL for longer than the liveness window, 3 intervals, silences the heartbeat too, and
the orchestrator then kills the worker as dead: such a call must release the GIL, or the
orchestrator's heartbeat interval (`--heartbeat-interval-ms`) be raised above a third of its
longest run.
"""

from __future__ import annotations

import _thread
import logging
import time

from neutrino_protocol import Heartbeat

from . import zmtp

log = logging.getLogger("neutrino.worker")


class HeartbeatThread:
    """Beats every `interval_ms` from `start()` until `stop()`.

    Built on `_thread` (a bare OS thread and a lock) rather than `threading.Thread` and an
    `Event`: every recycled worker starts one, and `threading`'s bookkeeping and its wait for the
    thread to come up cost a forked worker about 0.3 ms of CPU more (measured, issue 11). It is
    daemon-like: nothing waits for it, and a worker leaving through os._exit (sys.exit in a task,
    a crash) needs no stop().

    A beat that cannot be sent within one interval (the orchestrator not reading) drops the
    connection; the next beat opens a new one. Beats are never queued: a late one is worthless."""

    def __init__(self, backend: str, worker_id: str, interval_ms: int) -> None:
        if interval_ms < 1:
            raise ValueError(f"heartbeat interval must be at least 1 ms, got {interval_ms}")
        self._backend = backend
        self._worker_id = worker_id
        self._interval_s = interval_ms / 1000.0
        # Held until stop(): the thread's waits are timed acquires of it, which stop() ends at once.
        self._stop = _thread.allocate_lock()
        self._stop.acquire()
        self._stopped = False

    def start(self) -> None:
        _thread.start_new_thread(self._run, ())

    def stop(self) -> None:
        """Stop beating: the thread leaves at its next wake-up, closing its connection."""
        if not self._stopped:
            self._stopped = True
            self._stop.release()

    def _wait_stopped(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s`; True if stop() was called."""
        if self._stop.acquire(timeout=max(timeout_s, 0.0)):
            self._stop.release()  # stays "stopped" for every later wait
            return True
        return False

    def _run(self) -> None:
        interval = self._interval_s
        dealer: zmtp.Dealer | None = None
        due = time.monotonic() + interval
        try:
            while not self._wait_stopped(due - time.monotonic()):
                dealer = self._beat(dealer)
                # Scheduled from the previous due time so beats do not drift; after a stall (the
                # GIL held by C code, a stopped process) beat at once, once, and resume from now.
                due += interval
                if due < time.monotonic():
                    due = time.monotonic()
        finally:
            if dealer is not None:
                dealer.close()

    def _beat(self, dealer: zmtp.Dealer | None) -> zmtp.Dealer | None:
        """Send one beat, connecting first if needed; the connection to keep (None: dropped)."""
        try:
            if dealer is None:
                dealer = zmtp.connect(self._backend, f"{self._worker_id}/hb".encode(), self._interval_s)
                dealer.settimeout(self._interval_s)
            dealer.send(Heartbeat(worker_id=self._worker_id, rss_kb=read_rss_kb()).encode())
            return dealer
        except Exception as exc:
            # Without heartbeats the orchestrator will take this worker for dead and replace it,
            # which is the right outcome if the backend stays unreachable; say why first.
            log.warning(
                "worker %s: heartbeat not sent (%s: %s); retrying next interval",
                self._worker_id,
                type(exc).__name__,
                exc,
            )
            if dealer is not None:
                dealer.close()
            return None


def read_rss_kb() -> int | None:
    """This process's resident set in kB (`VmRSS` in /proc/self/status); None where unreadable."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
