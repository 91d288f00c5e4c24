"""A forked worker: shed the zygote's resources, connect a DEALER to the backend, and run assignments.

`worker_main` is entered in the child right after fork and never returns: every way out is
`os._exit`, so a worker can never fall back into the zygote's loop with a copy of its state.
A failure before `WorkerReady` is written to the start-up report pipe first (startup.py); after
it, any exit is a worker death. When the `Fork` asked for heartbeats, a side thread sends them
(heartbeat.py). The backend DEALER is zmtp.py's, in this thread: a worker starts no libzmq
threads, so one recycled every few milliseconds stays a single-threaded process until its first
heartbeat is due.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; see _shed_zygote
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from neutrino_protocol import ExitCode, ProtocolError, Shutdown, TaskAssignment, WorkerReady, decode

from . import logs, tracing, zmtp
from .heartbeat import HeartbeatThread
from .runner import Runner, TaskSpec
from .startup import write_report

log = logging.getLogger("neutrino.worker")

# How long connecting to the backend and the ZMTP handshake may take before start-up fails (the
# orchestrator's ROUTER answers at once; this only bounds a wedged one).
CONNECT_TIMEOUT_S = 10.0

_PR_SET_PDEATHSIG = 1
# Looked up here, in the zygote: each worker then finds it resolved instead of asking the dynamic
# linker again (a symbol lookup and a new function object per worker). Without use_errno (prctl's
# errno is never read): ctypes would save and restore errno around every call through a
# per-thread dict, which each worker would create and write anew (issue 11).
_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
_SIGKILL = int(signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    worker_id: str
    backend: str
    credits: int
    tasks: Mapping[str, TaskSpec]
    zygote_pid: int
    heartbeat_ms: int | None = None  # from Fork; None (or 0): no heartbeats
    # Built once in the zygote and inherited (it holds no per-process state until a task runs), so
    # a recycled worker does not redo it; None: built here.
    runner: Runner | None = None
    # The backend connection the zygote opened before the fork, its handshake under way (the
    # orchestrator's half arrives while this process starts); None: connect here.
    connection: zmtp.Dealer | None = None


class _StartFailed(Exception):
    """Start-up failed and was reported to the zygote (or logged, if the report could not be written)."""


@dataclass(slots=True)
class _Connection:
    dealer: zmtp.Dealer
    runner: Runner


def worker_main(spec: WorkerSpec, inherited_fds: Iterable[int], sigmask: Iterable[int], report_fd: int) -> NoReturn:
    """Child entry point. `inherited_fds` are the zygote's descriptors to close; `sigmask` the mask to
    restore; `report_fd` the write end of this worker's start-up report pipe."""
    code: int = ExitCode.FAILURE
    try:
        conn = _start(spec, inherited_fds, sigmask, report_fd)
        code = _serve(spec, conn)
    except _StartFailed:
        pass
    except SystemExit as exc:  # sys.exit() inside a task: exit as a Python program would (SPEC.md §7)
        code = _exit_status(exc.code)
    except BaseException:
        log.exception("worker %s crashed", spec.worker_id)
    finally:
        _flush()
        os._exit(code)


def _start(spec: WorkerSpec, inherited_fds: Iterable[int], sigmask: Iterable[int], report_fd: int) -> _Connection:
    """Everything up to and including `WorkerReady`; a failure on the way is reported, not inferred."""
    try:
        _shed_zygote(spec, inherited_fds, sigmask)
        gc.enable()
        conn = _connect(spec)
    except BaseException as exc:
        if not write_report(report_fd, exc):
            log.exception("worker %s failed to start (and could not report why to the zygote)", spec.worker_id)
        raise _StartFailed from exc
    os.close(report_fd)  # ready: from here on, however this process ends, it is a worker death
    return conn


def _exit_status(code: object) -> int:
    """The status `sys.exit(code)` gives a Python program: None is 0, a non-integer (a message) is 1."""
    if code is None:
        return ExitCode.OK
    if isinstance(code, int):
        return code & 0xFF
    return ExitCode.FAILURE


def _shed_zygote(spec: WorkerSpec, inherited_fds: Iterable[int], sigmask: Iterable[int]) -> None:
    signal.set_wakeup_fd(-1)
    for fd in inherited_fds:
        os.close(fd)
    # Through `_signal`, the C module under `signal`: signal.signal() turns the handler it replaces
    # into an enum, which for the zygote's Python handlers means raising and catching a ValueError
    # each time, 0.15 ms of every recycled worker's start (measured, issue 11).
    _signal.signal(signal.SIGTERM, _signal.SIG_DFL)
    _signal.signal(signal.SIGCHLD, _signal.SIG_DFL)
    _signal.signal(signal.SIGINT, _signal.SIG_IGN)  # the orchestrator coordinates shutdown, not Ctrl-C
    # The zygote blocked signals across fork so none could reach its handlers in this process;
    # pending ones are delivered now, with the default actions.
    _signal.pthread_sigmask(_signal.SIG_SETMASK, sigmask)
    if _PRCTL is not None:
        # If the zygote is killed outright it cannot reap us; die with it rather than linger as an orphan.
        _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL)
        if os.getppid() != spec.zygote_pid:
            raise SystemExit(ExitCode.FAILURE)


def _connect(spec: WorkerSpec) -> _Connection:
    dealer = spec.connection
    if dealer is None:
        dealer = zmtp.connect(spec.backend, spec.worker_id.encode(), CONNECT_TIMEOUT_S)
    else:
        dealer.complete_handshake(CONNECT_TIMEOUT_S)
    runner = spec.runner if spec.runner is not None else Runner(spec.tasks)
    dealer.send(WorkerReady(spec.worker_id, os.getpid(), spec.credits, list(spec.tasks)).encode())
    log.debug("worker %s ready on %s", spec.worker_id, spec.backend)
    return _Connection(dealer, runner)


def _serve(spec: WorkerSpec, conn: _Connection) -> int:
    dealer, runner = conn.dealer, conn.runner
    heartbeat = None
    if spec.heartbeat_ms:
        heartbeat = HeartbeatThread(spec.backend, spec.worker_id, spec.heartbeat_ms)
        heartbeat.start()
    try:
        return _answer(spec, dealer, runner)
    except zmtp.ConnectionClosed as exc:
        # The orchestrator is gone, or dropped this connection: nothing can reach this worker
        # any more. Exiting makes it a worker death, which the orchestrator (if still there)
        # answers and replaces.
        log.warning("worker %s: backend connection lost (%s); exiting", spec.worker_id, exc)
        return ExitCode.PROTOCOL
    finally:
        # Results already sent are in the kernel's socket buffer: the orchestrator gets them
        # after close too, so nothing waits here. The heartbeat thread is not stopped: the
        # process exits next (os._exit), and takes it along; waking it would only cost a switch.
        dealer.close()


def _answer(spec: WorkerSpec, dealer: zmtp.Dealer, runner: Runner) -> int:
    """Run assignments until Shutdown (exit code 0) or a peer of another protocol version (4)."""
    recv = dealer.recv
    send = dealer.send
    run = tracing.traced(logs.with_task_fields(runner.run))
    while True:
        frames = recv()
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            if exc.kind == "version":
                # SPEC §7: an orchestrator of another protocol version cannot be served; exit 4
                # says so in the log (the orchestrator replaces the worker like any other death).
                log.error(
                    "worker %s: the orchestrator speaks another protocol version (%s); exiting", spec.worker_id, exc
                )
                return ExitCode.PROTOCOL
            if exc.kind == "type":
                log.debug("ignoring backend message: %s", exc)
            else:
                log.warning("ignoring malformed backend message: %s", exc)
            continue
        if type(msg) is TaskAssignment:
            send(run(msg).encode())
        elif type(msg) is Shutdown:
            # Assignments run one at a time in arrival order, so every one sent before this
            # Shutdown has been answered by now: that is the graceful case, and a non-graceful one
            # has nothing running left to stop (to cut work short the zygote kills the worker).
            log.debug("worker %s shutting down (graceful=%s)", spec.worker_id, msg.graceful)
            return ExitCode.OK
        else:
            log.debug("ignoring %s on the backend", type(msg).__name__)


def _flush() -> None:
    """What a task printed, and its spans, written out before `os._exit` (which skips both).

    Plain try/except around each flush, not `contextlib.suppress`: every recycled worker runs this
    once, and each object it touches is a page copied from the zygote (the context manager's
    class, instance and methods were half of this function's copy-on-write faults, issue 11)."""
    tracing.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # closed, replaced or None (a task's doing): nothing to write there
            continue
