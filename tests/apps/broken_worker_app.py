"""Imports fine in the zygote, but no worker can create its ZeroMQ context: every worker fails
during start-up, before WorkerReady, and must say so in its WorkerExited."""

from __future__ import annotations

import os
from typing import NoReturn

import zmq
from neutrino import App

app = App("broken-worker")


def _no_context(*args: object, **kwargs: object) -> NoReturn:
    raise OSError("no ZeroMQ context for this worker (broken on purpose)")


def _break_zmq() -> None:
    zmq.Context = _no_context  # type: ignore[assignment, misc]


os.register_at_fork(after_in_child=_break_zmq)


@app.task()
def noop() -> None:
    return None
