"""Imports fine in the zygote, but no worker can use its backend connection: every worker fails
during start-up (reading the orchestrator's half of the handshake), before WorkerReady, and must
say so in its WorkerExited."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

from neutrino import App

app = App("broken-worker")


def _no_recv(*args: object, **kwargs: object) -> NoReturn:
    raise OSError("no backend connection for this worker (broken on purpose)")


def _break_sockets() -> None:
    socket.socket.recv = _no_recv  # type: ignore[method-assign, assignment]


os.register_at_fork(after_in_child=_break_sockets)


@app.task()
def noop() -> None:
    return None
