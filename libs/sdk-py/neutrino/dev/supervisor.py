"""The local stack's supervisor: runs each `Service` as a child process, prefixes its output with
its coloured name, waits for readiness, restarts a service that dies (with backoff) or whose files
changed (`--reload`), and stops everything in drain order on Ctrl-C or SIGTERM.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only this process, which
then stops them in order: the gateway first (no new runs), then the task pods (they drain), then
the model servers (which draining tasks may still call). Each child also gets SIGTERM if this
process dies without stopping them (Linux `PR_SET_PDEATHSIG`), so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .plan import Service

__all__ = ["Supervisor"]

# Exit codes a restart cannot fix: bad flags (2) and an app that does not import (3), in every
# service (SPEC.md §7, the model server's config.py); a model whose load() raised (4).
NO_RESTART = {"task-pod": {2, 3}, "gateway": {2, 3}, "model": {2, 3, 4}}
BACKOFF_FIRST_S = 0.5  # the first restart waits this long; each crash in a row doubles it
BACKOFF_MAX_S = 10.0
HEALTHY_AFTER_S = 30.0  # a service up this long has recovered: its next crash starts over at the first backoff
READY_POLL_S = 0.05
STOP_MARGIN_S = 5.0  # past the drain's grace period, a child that has not exited is killed
_PR_SET_PDEATHSIG = 1
_COLORS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[91m", "\033[96m", "\033[93m")
_RESET = "\033[0m"
_STOP_ORDER = ("gateway", "task-pod", "model")


@dataclass
class Child:
    service: Service
    prefix: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    backoff_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None  # a scheduled start (after a crash, or now for a reload)
    reload_pending: bool = False  # stopped by a file change: start again as soon as it exits
    gave_up: bool = False  # exited with a code a restart cannot fix; waits for a file change
    readers: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        services: Sequence[Service],
        *,
        root: Path,
        grace_period_s: float,
        reload: bool = False,
        color: bool = True,
        out: IO[str] | None = None,
        on_ready: Callable[[float], None] | None = None,
    ) -> None:
        self.root = root
        self.grace_period_s = grace_period_s
        self.reload = reload
        self.out = out or sys.stdout
        self.on_ready = on_ready
        self._lock = threading.Lock()  # one line at a time on `out`
        self._events: queue.Queue[tuple[str, object]] = queue.Queue()
        width = max(len(s.name) for s in services)
        self.children = [
            Child(s, self._prefix(s.name, width, _COLORS[i % len(_COLORS)] if color else ""))
            for i, s in enumerate(services)
        ]
        self._color = color
        self._announced = False
        self._stopping = False  # set by the first Ctrl-C / SIGTERM; a second one kills

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until Ctrl-C or SIGTERM, stop everything. Returns the exit code."""
        started = time.monotonic()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        watcher = self._watch() if self.reload else None
        try:
            for child in self.children:
                self._start(child)
            while True:
                try:
                    kind, value = self._events.get(timeout=READY_POLL_S)
                except queue.Empty:
                    kind, value = "tick", None
                if kind == "stop":
                    self.say(f"{value}: stopping (gateway, then task pods, then models; Ctrl-C again to kill)")
                    break
                if kind == "changed":
                    self._reload(value)  # type: ignore[arg-type]
                self._check_exits()
                self._start_due()
                self._probe(started)
        finally:
            if watcher is not None:
                watcher.set()
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.say("stopped")
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            self._kill_all()  # a second Ctrl-C: no more waiting
            return
        self._stopping = True
        self._events.put(("stop", name))

    # -- starting and restarting ------------------------------------------------------------------

    def _start(self, child: Child) -> None:
        s = child.service
        env = {**os.environ, **s.env}
        try:
            proc = subprocess.Popen(
                s.cmd,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            self.say(f"cannot start: {exc}", child)
            child.gave_up = True
            return
        child.proc, child.started_at, child.ready, child.restart_at = proc, time.monotonic(), False, None
        child.reload_pending = child.gave_up = False
        reader = threading.Thread(target=self._pump, args=(child, proc), daemon=True, name=f"log-{s.name}")
        reader.start()
        child.readers.append(reader)

    def _check_exits(self) -> None:
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            child.proc, child.ready = None, False
            if child.reload_pending:
                self.say("restarting for the change", child)
                child.restart_at = now
                continue
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            if code in NO_RESTART[child.service.kind]:
                child.gave_up = True
                fix = "save a change to restart it" if self.reload else "fix it and run `neutrino dev` again"
                self.say(f"{how}, which a restart will not fix (see its log above); {fix}", child)
                continue
            if now - child.started_at >= HEALTHY_AFTER_S:
                child.backoff_s = BACKOFF_FIRST_S
            self.say(f"{how}; restarting in {child.backoff_s:.1f} s", child)
            child.restart_at = now + child.backoff_s
            child.backoff_s = min(BACKOFF_MAX_S, child.backoff_s * 2)

    def _start_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None and child.restart_at is not None and child.restart_at <= now:
                self._start(child)

    def _probe(self, started: float) -> None:
        for child in self.children:
            if child.proc is None or child.ready or not _answers(child.service.readiness_url):
                continue
            child.ready = True
            if child.ever_ready:
                self.say("ready again", child)
            child.ever_ready = True
        if not self._announced and all(c.ready for c in self.children):
            self._announced = True
            if self.on_ready is not None:
                with self._lock:
                    self.on_ready(time.monotonic() - started)

    # -- reload ---------------------------------------------------------------------------------

    def _watch(self) -> threading.Event:
        from watchfiles import PythonFilter, watch

        stop = threading.Event()
        paths = sorted({(self.root / d).resolve() for c in self.children for d in c.service.deps})
        files = {str(p) for p in paths if p.is_file()}  # e.g. the orchestrator binary after `cargo build`
        python = PythonFilter()

        def wanted(change: object, path: str) -> bool:
            return path in files or bool(python(change, path))  # type: ignore[arg-type]

        def loop() -> None:
            for changes in watch(*paths, watch_filter=wanted, stop_event=stop, debounce=300):
                self._events.put(("changed", {Path(path) for _, path in changes}))

        threading.Thread(target=loop, daemon=True, name="reload-watcher").start()
        return stop

    def _reload(self, paths: set[Path]) -> None:
        shown = ", ".join(sorted(_relative(p, self.root) for p in paths))
        for child in self.children:
            folders = [(self.root / d).resolve() for d in child.service.deps]
            if not any(p == f or f in p.parents for p in paths for f in folders):
                continue
            self.say(f"{shown} changed; restarting", child)
            if child.proc is None:
                child.restart_at = time.monotonic()
            else:
                child.reload_pending = True
                _signal(child.proc, signal.SIGTERM)

    # -- stopping -------------------------------------------------------------------------------

    def _stop_all(self) -> None:
        for kind in _STOP_ORDER:
            group = [(c, c.proc) for c in self.children if c.service.kind == kind and c.proc is not None]
            for _, proc in group:
                _signal(proc, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_period_s + STOP_MARGIN_S
            for child, proc in group:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    waited = self.grace_period_s + STOP_MARGIN_S
                    self.say(f"still running {waited:.0f} s after SIGTERM; killing it", child)
                _kill_group(proc)
                if proc.returncode not in (0, None, -signal.SIGTERM):
                    self.say(f"stopped with code {proc.returncode}", child)
        for child in self.children:
            for reader in child.readers:
                reader.join(timeout=2.0)

    def _kill_all(self) -> None:
        for child in self.children:
            if child.proc is not None:
                _kill_group(child.proc)

    # -- output ---------------------------------------------------------------------------------

    def _pump(self, child: Child, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.out.write(f"{child.prefix}{line}\n")
                self.out.flush()

    def say(self, message: str, child: Child | None = None) -> None:
        prefix = child.prefix if child is not None else self._prefix("dev", 0, "\033[1m" if self._color else "")
        with self._lock:
            self.out.write(f"{prefix}{message}\n")
            self.out.flush()

    @staticmethod
    def _prefix(name: str, width: int, color: str) -> str:
        return f"{color}{name:<{width}} |{_RESET if color else ''} "


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the child's session (its own process group), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `neutrino dev` dies, so no service outlives it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
