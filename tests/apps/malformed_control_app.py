"""A zygote that sends a malformed control record (the right type code, a meta of the wrong shape)
before every `Forked` and `WorkerExited` it reports, for tests/test_hostile_client.py: the
orchestrator must skip and count them, and go on serving."""

from __future__ import annotations

import os
from typing import Any

import msgpack
from neutrino import App
from neutrino_protocol import Forked, Message, WorkerExited, header
from neutrino_worker import control

app = App("malformed-control")
_send = control.ControlLink.send


def _send_after_garbage(self: control.ControlLink, msg: Message) -> None:
    if isinstance(msg, (Forked, WorkerExited)):
        body = header(msg.TYPE) + msgpack.packb({"pid": "not a pid", "exit_code": -1})
        self._sock.sendall(len(body).to_bytes(4, "big") + body)
    _send(self, msg)


control.ControlLink.send = _send_after_garbage  # type: ignore[method-assign]


@app.task()
def add(x: int, y: int) -> int:
    return x + y


@app.task()
def end_worker(code: int) -> Any:
    os._exit(code)
