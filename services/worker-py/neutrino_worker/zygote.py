"""The zygote: import the user app once, then fork workers that share it copy-on-write.

Run by the orchestrator as
`python -m neutrino_worker.zygote --app MODULE:ATTR --app-dir DIR --control PATH --backend ENDPOINT`.
It speaks the control link (SPEC §4.4): ZygoteReady (with each task's options) or ZygoteFailed
once, then Fork → Forked, WorkerExited whenever a worker dies (with its start-up report when it
failed before WorkerReady, startup.py), and Shutdown; once, after the first
Forks, ZygoteCatalog (catalog.py), built in a short-lived child of its own (`CatalogChild`) so
that neither pydantic nor the schemas ever enter the zygote: every worker forked later then copies
a smaller process, and the zygote keeps answering Forks while the catalog is built. It never
creates a ZeroMQ context: it opens each worker's backend connection (zmtp.py) just before the fork,
and the worker completes its handshake.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; see _fork_with_pipe
import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import msgpack
from neutrino_protocol import (
    ExitCode,
    Fork,
    Forked,
    Shutdown,
    TaskOptions,
    WorkerExited,
    ZygoteCatalog,
    ZygoteFailed,
    ZygoteReady,
)
from neutrino_protocol.payload import pack_catalog

from . import zmtp
from .catalog import CatalogTimer, build_catalog
from .children import Children
from .config import ZygoteConfig, parse_args
from .control import ControlLink, LinkClosed
from .loader import AppLoadError, load_app
from .logs import setup_logging
from .runner import Runner, TaskSpec
from .startup import fork_failed, open_pipe
from .warmup import warm_up
from .worker import WorkerSpec, worker_main

if TYPE_CHECKING:
    from neutrino import App, Task

log = logging.getLogger("neutrino.zygote")

# How long workers get to exit after SIGTERM before they are killed. Long enough for the
# interpreter to unwind, short enough that the orchestrator's own shutdown grace is not eaten.
SHUTDOWN_GRACE_S = 3.0
_PR_SET_PDEATHSIG = 1
_BLOCKED_ACROSS_FORK = (int(signal.SIGCHLD), int(signal.SIGTERM))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    # First thing: a collection during the app import would touch (and later un-share) objects that
    # gc.freeze() is about to move out of the collector's sight in every worker.
    gc.disable()
    config = parse_args(argv)
    setup_logging(config)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator, in its own process group, decides
    try:
        link = ControlLink.connect(config.control_path)
    except OSError as exc:
        log.error("cannot connect to the orchestrator's control socket %s: %s", config.control_path, exc)
        sys.exit(ExitCode.PROTOCOL)
    sys.path.insert(0, config.app_dir)
    try:
        loaded = load_app(config.app)
    except AppLoadError as exc:
        error = exc.error
        print(error.traceback or f"{error.ename}: {error.evalue}", file=sys.stderr, flush=True)
        with contextlib.suppress(LinkClosed):
            link.send(ZygoteFailed(error))
        sys.exit(ExitCode.APP_IMPORT)
    tasks = loaded.app.tasks
    try:
        warm_up()
    except Exception:  # only ever costs speed: the workers quicken the code themselves
        log.warning("warming up the worker code in the zygote failed; carrying on", exc_info=True)
    gc.freeze()
    zygote = Zygote(link, config, tasks, loaded.app)
    try:
        link.send(
            ZygoteReady(
                pid=os.getpid(), tasks=list(tasks), import_ms=loaded.import_ms, task_options=task_options(tasks)
            )
        )
    except LinkClosed as exc:
        log.error("%s", exc)
        sys.exit(ExitCode.PROTOCOL)
    log.info("app %s imported in %.1f ms: %d tasks", config.app, loaded.import_ms, len(tasks))
    sys.exit(zygote.serve())


def task_options(tasks: Mapping[str, Task[..., Any]]) -> dict[str, TaskOptions]:
    """Each task's decorator options as the orchestrator enforces them (SPEC §4.4 TaskOptions).

    `retry_on` stays here: the worker applies it, answering `retry` (runner.py)."""
    return {
        name: TaskOptions(
            timeout_s=task.timeout,
            retries=task.retries,
            retry_backoff_s=task.retry_backoff_s,
            retry_backoff_max_s=task.retry_backoff_max_s,
        )
        for name, task in tasks.items()
    }


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """Signals are handled from the wake-up pipe in the main loop; this handler only has to exist."""


class Zygote:
    def __init__(self, link: ControlLink, config: ZygoteConfig, tasks: Mapping[str, TaskSpec], app: App) -> None:
        self._link = link
        self._config = config
        self._tasks = tasks
        self._app = app
        self._children = Children()
        self._runner: Runner | None = None  # built at the first fork, then inherited by every worker
        self._catalog: CatalogChild | None = None  # the child building the catalog, while it runs
        self._pid = os.getpid()  # taken here, not in the child, so a child can tell if we died during fork
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def serve(self) -> int:
        """Answer the control link until Shutdown (exit 0), SIGTERM (exit 0) or a lost link (exit 4)."""
        # SIGCHLD and SIGTERM become bytes on the wake-up pipe, so one poll() waits for both the
        # control link and the signals, and nothing runs inside a signal handler.
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore_signal)
        signal.signal(signal.SIGTERM, _ignore_signal)
        poller = select.poll()
        poller.register(self._link.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        catalog = CatalogTimer(time.monotonic())
        try:
            while True:
                events = poller.poll(catalog.wait_ms(time.monotonic()))
                for fd, _ in events:
                    if self._catalog is not None and fd == self._catalog.fd:
                        if (built := self._catalog.read()) is not None:
                            poller.unregister(fd)
                            self._catalog = None
                            self._link.send(built)
                        continue
                    if fd == self._wake_r:
                        signals = self._drain_signals()
                        if signal.SIGCHLD in signals:
                            self._report(self._children.reap())
                        if signal.SIGTERM in signals:
                            log.info("SIGTERM: stopping workers")
                            return self._shutdown(graceful=True)
                        continue
                    for msg in self._link.receive():
                        if type(msg) is Fork:
                            for worker_id in msg.worker_ids:
                                self._fork(worker_id, msg.heartbeat_ms)
                            catalog.forked()
                        elif type(msg) is Shutdown:
                            return self._shutdown(msg.graceful)
                        else:
                            log.debug("ignoring %s on the control link", type(msg).__name__)
                if catalog.due(time.monotonic(), quiet=not events):
                    catalog.done()
                    self._catalog = CatalogChild.start(self._app, self._inherited())
                    if self._catalog is None:  # could not fork: build it here after all
                        self._link.send(build_catalog(self._app))
                    else:
                        poller.register(self._catalog.fd, select.POLLIN)
        except LinkClosed as exc:
            log.warning("%s; killing %d workers", exc, len(self._children))
            self._stop(signal.SIGKILL, report=False)
            return ExitCode.PROTOCOL
        finally:
            if self._catalog is not None:
                self._catalog.kill()

    def _inherited(self) -> list[int]:
        """The zygote's descriptors that a child it forks must close."""
        fds = [self._link.fileno(), self._wake_r, self._wake_w, *self._children.report_fds()]
        if self._catalog is not None:
            fds.append(self._catalog.fd)
        return fds

    def _shared_runner(self) -> Runner | None:
        """The task runner every worker inherits, built once; None if it cannot be built here (each
        worker then builds its own, and reports the failure as its start-up failure)."""
        if self._runner is None:
            try:
                self._runner = Runner(self._tasks)
            except Exception:
                log.debug("cannot build the shared task runner; each worker builds its own", exc_info=True)
                return None
        return self._runner

    def _fork(self, worker_id: str, heartbeat_ms: int | None) -> None:
        # Buffered output would otherwise be written once by the zygote and again by every worker.
        sys.stdout.flush()
        sys.stderr.flush()
        connection = self._open_connection(worker_id)
        # Everything the worker is handed is built here, before the fork: code that runs once per
        # worker would otherwise warm up (and write to its shared code objects) in every worker.
        spec = WorkerSpec(
            worker_id,
            self._config.backend,
            self._config.credits,
            self._tasks,
            self._pid,
            heartbeat_ms,
            self._shared_runner(),
            connection,
        )
        inherited = self._inherited()
        gc.freeze()  # whatever the zygote allocated since the last fork joins the shared, never-scanned set
        try:
            pid, report_r, report_w, mask = _fork_with_pipe(open_pipe)
        except OSError as exc:
            if connection is not None:
                connection.close()
            log.error("fork of worker %s failed: %s", worker_id, exc)
            # Reported as a worker that failed to start (SPEC §4.4), so the orchestrator backs off.
            self._link.send(WorkerExited(worker_id, 0, exit_code=ExitCode.FAILURE, error=fork_failed(exc)))
            return
        if pid == 0:
            try:
                worker_main(spec, (*inherited, report_r), mask, report_w)
            finally:
                os._exit(ExitCode.FAILURE)  # only if worker_main could not even start: never back into the zygote
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        os.close(report_w)
        if connection is not None:
            connection.close()  # the worker's now: only this process's descriptor of it goes
        self._children.add(pid, worker_id, report_r)
        log.debug("forked worker %s as pid %d", worker_id, pid)
        self._link.send(Forked(worker_id, pid))

    def _open_connection(self, worker_id: str) -> zmtp.Dealer | None:
        """The worker's backend connection, opened before the fork with our half of the ZMTP
        handshake sent, so the orchestrator's half is on its way while the worker starts: its
        `WorkerReady` leaves without waiting a round trip (replacement-ready latency, issue 11).
        None if it cannot be opened at once: the worker then connects itself, and reports why if
        it cannot (the start-up failure signal, SPEC §4.4)."""
        try:
            return zmtp.open_connection(self._config.backend, worker_id.encode(), timeout_s=0)
        except (OSError, ValueError) as exc:
            log.debug("worker %s connects itself: %s", worker_id, exc)
            return None

    def _shutdown(self, graceful: bool) -> int:
        self._stop(signal.SIGTERM if graceful else signal.SIGKILL, report=True)
        return ExitCode.OK

    def _stop(self, sig: int, report: bool) -> None:
        """Signal every worker, reap them as they exit, and SIGKILL whoever outlasts the grace period."""
        self._children.signal_all(sig)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while True:
            exits = self._children.reap()
            if report:
                report = self._report_quietly(exits)
            remaining = deadline - time.monotonic()
            if not self._children or remaining <= 0:
                break
            ready, _, _ = select.select([self._wake_r], [], [], remaining)
            if ready:
                self._drain_signals()
        if self._children:
            log.warning(
                "killing %d workers that outlasted the %.0f s grace period", len(self._children), SHUTDOWN_GRACE_S
            )
            self._children.signal_all(signal.SIGKILL)
            exits = self._children.reap_all()
            if report:
                self._report_quietly(exits)

    def _report(self, exits: list[WorkerExited]) -> None:
        for exited in exits:
            log.info("worker %s (pid %d) exited: code %s signal %s", *_describe(exited))
            self._link.send(exited)

    def _report_quietly(self, exits: list[WorkerExited]) -> bool:
        """Report exits during shutdown; a link that broke meanwhile just ends the reporting."""
        try:
            self._report(exits)
        except LinkClosed:
            return False
        return True

    def _drain_signals(self) -> set[int]:
        signals: set[int] = set()
        while True:
            try:
                data = os.read(self._wake_r, 512)
            except BlockingIOError:
                return signals
            signals.update(data)
            if len(data) < 512:
                # Read up to what the pipe held: a byte written since wakes the next poll() (it
                # reports the pipe while it is readable), without one more read ending in
                # BlockingIOError each SIGCHLD, i.e. each recycled worker.
                return signals


class CatalogChild:
    """The task catalog, built in a child of the zygote and read back through a pipe.

    Building it imports pydantic and makes a JSON Schema per task: about 14 MB that every worker
    forked afterwards would copy page tables for and unmap again at exit (measured on 2 busy vCPUs:
    a bare fork + exit of the zygote costs 1.9-2.0 ms of CPU with them, 1.7 without), and 100-400 ms
    (more on a busy machine) during which
    a zygote building it inline answers no Fork. The child sends the finished `ZygoteCatalog`'s
    fields, msgpack-encoded, and exits; whatever goes wrong there, the zygote sends an empty
    catalog, so the orchestrator still learns that none is coming (as `build_catalog` does)."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self._data = bytearray()

    @classmethod
    def start(cls, app: App, inherited: list[int]) -> CatalogChild | None:
        """Fork the builder; None if fork failed (the caller builds inline)."""
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid, read_fd, write_fd, mask = _fork_with_pipe(lambda: os.pipe2(os.O_CLOEXEC))
        except OSError as exc:
            log.warning("cannot fork to build the task catalog (%s); building it in the zygote", exc)
            return None
        if pid == 0:
            try:
                _catalog_child(app, [*inherited, read_fd], mask, write_fd)
            finally:
                os._exit(0)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return cls(pid, read_fd)

    def read(self) -> ZygoteCatalog | None:
        """Read what the child wrote; the catalog once it is done (EOF), else None."""
        try:
            while chunk := os.read(self.fd, 65536):
                self._data += chunk
        except BlockingIOError:
            return None
        os.close(self.fd)
        try:
            _, status = os.waitpid(self.pid, 0)  # it closed its end: it is exiting
        except ChildProcessError:  # reaped by someone else (user code calling waitpid(-1))
            status = -1
        try:
            tasks, build_ms, payload = msgpack.unpackb(bytes(self._data), raw=False)
            return ZygoteCatalog(tasks=list(tasks), build_ms=float(build_ms), payload=bytes(payload))
        except Exception as exc:
            log.error(
                "the task catalog's builder (pid %d, wait status %d) sent no catalog (%s); sending an empty one",
                self.pid,
                status,
                exc,
            )
            return ZygoteCatalog(tasks=[], build_ms=0.0, payload=pack_catalog({}))

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _fork_with_pipe(make_pipe: Callable[[], tuple[int, int]]) -> tuple[int, int, int, set[int]]:
    """fork() with a fresh pipe between parent and child: (pid, read end, write end, the signal mask
    to restore). SIGCHLD/SIGTERM stay blocked in both, away from the zygote's handlers while the
    child still has them: the parent restores `mask` once it has done its part, the child after
    installing its own handlers. On OSError both ends are closed and the mask restored.

    Through `_signal`, the C module under `signal`: `signal.pthread_sigmask` turns every signal
    in the masks it returns into an enum member, a per-fork cost in the zygote (issue 11)."""
    mask: set[int] = _signal.pthread_sigmask(_signal.SIG_BLOCK, _BLOCKED_ACROSS_FORK)
    read_fd = write_fd = -1
    try:
        read_fd, write_fd = make_pipe()
        return os.fork(), read_fd, write_fd, mask
    except OSError:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        raise


def _catalog_child(app: App, inherited: list[int], mask: Iterable[int], write_fd: int) -> None:
    """In the catalog builder: shed the zygote's descriptors and handlers, build, write, return."""
    signal.set_wakeup_fd(-1)
    for fd in inherited:
        os.close(fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the zygote
    msg = build_catalog(app)
    data = memoryview(msgpack.packb([msg.tasks, msg.build_ms, msg.payload], use_bin_type=True))
    while data:
        data = data[os.write(write_fd, data) :]


def _describe(exited: WorkerExited) -> tuple[str, int, int | None, int | None]:
    return exited.worker_id, exited.pid, exited.exit_code, exited.signal


if __name__ == "__main__":
    main()
