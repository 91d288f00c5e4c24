"""The worker's heartbeat: a daemon thread that tells the orchestrator this worker is alive, even
while a task keeps the main thread busy (SPEC.md §4.3 `Heartbeat`).

The thread owns a second DEALER on the worker's context (sockets are not thread-safe, contexts
are), with routing id `<worker_id>/hb`, connected to the same backend endpoint. It sends
`Heartbeat(worker_id, rss_kb)` every interval, the first one interval after start: `WorkerReady`
already told the orchestrator the worker is alive, and a worker recycled within its first
interval (every few milliseconds, under `--max-tasks-per-worker` with short tasks) then never
opens the socket, which measured about a quarter of a short-lived worker's cost. The main thread
never touches it: the per-task path takes no lock and pays nothing for it.

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
import contextlib
import logging
import time
from typing import Any

import zmq
from neutrino_protocol import Heartbeat

log = logging.getLogger("neutrino.worker")

# Heartbeats queued while the orchestrator is unreachable are worthless once it is back; a few
# are kept, the rest dropped rather than ever blocking the thread (sends are NOBLOCK).
_SNDHWM = 4
# How long stop() waits for the thread; it only ever sleeps on the stop event or sends NOBLOCK.
STOP_TIMEOUT_S = 1.0


class HeartbeatThread:
    """Beats every `interval_ms` from `start()` until `stop()`.

    Built on `_thread` (a bare OS thread and a few locks) rather than `threading.Thread` and an
    `Event`: every recycled worker starts one, and `threading`'s bookkeeping and its wait for the
    thread to come up cost a forked worker about 0.3 ms of CPU more (measured, issue 11). It is
    daemon-like: a worker leaving through os._exit (sys.exit in a task, a crash) needs no stop()."""

    def __init__(self, ctx: zmq.Context[Any], backend: str, worker_id: str, interval_ms: int) -> None:
        if interval_ms < 1:
            raise ValueError(f"heartbeat interval must be at least 1 ms, got {interval_ms}")
        self._ctx = ctx
        self._backend = backend
        self._worker_id = worker_id
        self._interval_s = interval_ms / 1000.0
        # Held until stop(): the thread's waits are timed acquires of it, which stop() ends at once.
        self._stop = _thread.allocate_lock()
        self._stop.acquire()
        self._stopped = False
        # Held by the thread while it runs: stop() joins by acquiring it.
        self._running = _thread.allocate_lock()
        # Guards the socket's opening against stop(): once stop() saw no socket, none is opened,
        # so stop() need not wait for a thread that never touched zmq (ctx.term() cannot hang on it).
        self._state = _thread.allocate_lock()
        self._opened = False

    def start(self) -> None:
        self._running.acquire()
        try:
            _thread.start_new_thread(self._main, ())
        except BaseException:
            self._running.release()
            raise

    def stop(self) -> bool:
        """Stop beating and close the socket; True once the thread holds no socket (the context may
        then be terminated: `zmq_ctx_term` waits for every socket on it to close)."""
        with self._state:
            opened = self._opened
            if not self._stopped:
                self._stopped = True
                self._stop.release()
        if not opened:
            return True  # within the first interval: the thread will leave without opening one
        if self._running.acquire(timeout=STOP_TIMEOUT_S):
            self._running.release()
            return True
        return False

    def _wait_stopped(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s`; True if stop() was called."""
        if self._stop.acquire(timeout=max(timeout_s, 0.0)):
            self._stop.release()  # stays "stopped" for every later wait
            return True
        return False

    def _main(self) -> None:
        try:
            self._run()
        finally:
            self._running.release()

    def _run(self) -> None:
        if self._wait_stopped(self._interval_s):
            return  # stopped within the first interval: nothing was ever opened
        with self._state:
            if self._stopped:
                return
            self._opened = True
        try:
            sock = self._ctx.socket(zmq.DEALER)
        except Exception:
            log.exception("worker %s: heartbeat thread failed", self._worker_id)
            return
        try:
            sock.setsockopt(zmq.ROUTING_ID, f"{self._worker_id}/hb".encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, _SNDHWM)
            sock.connect(self._backend)
            self._beat(sock)
        except Exception:
            # Without heartbeats the orchestrator will take this worker for dead and replace it,
            # which is the right outcome for a worker in a state this odd; say why first.
            log.exception("worker %s: heartbeat thread failed", self._worker_id)
        finally:
            sock.close(linger=0)

    def _beat(self, sock: zmq.Socket[Any]) -> None:
        interval = self._interval_s
        due = time.monotonic()
        while True:
            # Again: the orchestrator is unreachable and the queue full; the next beat tries again.
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(Heartbeat(worker_id=self._worker_id, rss_kb=read_rss_kb()).encode(), zmq.NOBLOCK)
            # Scheduled from the previous due time so beats do not drift; after a stall (the GIL
            # held by C code, a stopped process) beat at once, once, and resume from now.
            due += interval
            wait = due - time.monotonic()
            if wait < 0:
                due, wait = time.monotonic(), 0.0
            if self._wait_stopped(wait):
                return


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
