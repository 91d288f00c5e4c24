"""Run the worker's own per-message code in the zygote, before any fork, so that every worker
inherits it already specialized.

CPython 3.11 rewrites a function's bytecode in place as it warms up: a counter in the code
object on each of its first calls, then the quickened instructions and their inline caches. In a
forked worker each such write lands on a page it shares with the zygote, and copies it. The
worker's start-up and message loop (the backend handshake and framing, the protocol's encoders
and decoders, the task runner) never run in the zygote otherwise, so every recycled worker used
to quicken them all over again: about a tenth of its copy-on-write faults (measured, issue 11).

Only Neutrino's code runs here, on made-up messages over a socket pair: never a user task, never
the orchestrator's socket.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from neutrino_protocol import Heartbeat, Shutdown, TaskAssignment, WorkerReady, decode
from neutrino_protocol.payload import pack_args

from . import logs, zmtp
from .runner import Runner

# CPython 3.11 quickens a function after 8 calls and specializes an instruction within a few
# executions more; this many rounds leave both done.
ROUNDS = 32
_TASK = "neutrino.warm-up"


def _noop(*args: Any) -> None:
    return None


@dataclass(frozen=True)
class _WarmUpTask:
    """A TaskSpec (runner.py) for `_noop`: the runner's success path without user code."""

    name: str = _TASK
    fn: Callable[..., Any] = _noop
    is_async: bool = False
    signature: inspect.Signature = field(default_factory=lambda: inspect.signature(_noop))
    retry_on: tuple[type[BaseException], ...] = ()


def warm_up(worker_id: str = "warm-up") -> None:
    """Send made-up assignments through a zmtp.Dealer and a Runner, as a worker would, ROUNDS times."""
    runner = Runner({_TASK: _WarmUpTask()})
    run = logs.with_task_fields(runner.run)
    args = pack_args([1, "a"], {})
    # Filled once here, the worker logger's level cache: each worker's first `log.debug` would
    # otherwise compute it, and write it into a logger every worker shares.
    logging.getLogger("neutrino.worker").isEnabledFor(logging.DEBUG)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        dealer = zmtp.Dealer(ours)
        peer = zmtp.Dealer(theirs)
        # The worker's side of the handshake: a ROUTER's greeting and READY, as the orchestrator sends them.
        router_hello = zmtp.hello(b"ROUTER")
        for _ in range(ROUNDS):
            theirs.sendall(router_hello)
            dealer.complete_handshake(None)
        for task_id in range(ROUNDS):
            dealer.send(WorkerReady(worker_id, os.getpid(), 1, [_TASK]).encode())
            peer.recv()
            peer.send(TaskAssignment(task_id, _TASK, 1, payload=args).encode())
            msg = decode(dealer.recv())
            if type(msg) is not TaskAssignment:
                raise RuntimeError(f"warm-up: sent a TaskAssignment, read back a {type(msg).__name__}")
            dealer.send(run(msg).encode())
            peer.recv()
            dealer.send(Heartbeat(worker_id=worker_id, rss_kb=1).encode())
            peer.recv()
            peer.send(Shutdown(graceful=True).encode())
            decode(dealer.recv())
