"""Property tests (hypothesis) of the worker's own decoding: the control link's record reader,
fed random and mutated byte streams, returns messages or raises `LinkClosed`, never anything
else; the runner, fed random argument payloads, answers every assignment with a `TaskResult`
(a typed error for bad arguments), never an exception."""

from __future__ import annotations

import os
import socket
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neutrino import App
from neutrino_protocol import (
    ErrorInfo,
    ErrorKind,
    Fork,
    Forked,
    Message,
    Shutdown,
    TaskAssignment,
    TaskResult,
    WorkerExited,
    ZygoteCatalog,
    decode,
    encode_control,
)
from neutrino_worker.control import ControlLink, LinkClosed
from neutrino_worker.runner import Runner

SETTINGS = settings(
    max_examples=int(os.environ.get("NEUTRINO_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
VALID = [
    encode_control(Fork(["w-1", "w-2"], heartbeat_ms=500)),
    encode_control(Shutdown(graceful=True)),
    encode_control(Forked("w-1", 42)),
    encode_control(WorkerExited("w-1", 42, exit_code=3, error=ErrorInfo("worker_start_error", "E", "v"))),
    encode_control(ZygoteCatalog(tasks=["add"], build_ms=0.5, payload=b"\x81\xa3add\x80")),
]


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Valid records, some mutated (flipped, cut, grown), and raw bytes, back to back."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        part = bytearray(draw(st.sampled_from(VALID)) if draw(st.booleans()) else draw(st.binary(max_size=24)))
        if part and draw(st.booleans()):
            at = draw(st.integers(0, len(part) - 1))
            part[at] ^= draw(st.integers(1, 255))
        if draw(st.booleans()):
            part = part[: draw(st.integers(0, len(part)))]
        parts.append(bytes(part))
    return b"".join(parts)


@SETTINGS
@given(streams(), st.integers(1, 64))
def test_the_control_link_reader_returns_messages_or_closes(stream: bytes, chunk: int) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    link = ControlLink(ours)
    received: list[Message] = []
    try:
        for start in range(0, len(stream), chunk):
            theirs.sendall(stream[start : start + chunk])
            try:
                received += link.receive()
            except LinkClosed:
                return  # framing lost (a length over the limit) or another version: the link ends
        theirs.close()
        while True:
            try:
                received += link.receive()
            except LinkClosed:
                break
    finally:
        ours.close()
        theirs.close()
    assert all(isinstance(m, Message) for m in received)


def test_the_reader_check_can_fail() -> None:
    """Guards the property: a stream of valid records does come back as messages."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        theirs.sendall(b"".join(VALID))
        assert len(ControlLink(ours).receive()) == len(VALID)
    finally:
        ours.close()
        theirs.close()


def make_runner() -> Runner:
    app = App("fuzz")

    @app.task()
    def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task()
    async def echo(*args: Any, **kwargs: Any) -> Any:
        return [list(args), kwargs]

    return Runner(app.tasks)


RUNNER = make_runner()
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
KINDS = {kind.value for kind in ErrorKind}


@SETTINGS
@given(
    st.sampled_from(["add", "echo", "nope"]),
    st.binary(max_size=32) | msgpack_values.map(lambda v: bytes(msgpack.packb(v, use_bin_type=True))),
)
def test_the_runner_answers_any_payload_with_a_result(task: str, payload: bytes) -> None:
    result = RUNNER.run(TaskAssignment(7, task, 1, payload=payload))
    assert isinstance(result, TaskResult) and result.task_id == 7
    if result.status == "ok":
        assert result.payload is not None
    else:
        assert result.error is not None and result.error.kind in KINDS
    # what the worker sends must itself be a well-formed message
    assert type(decode(result.encode())) is TaskResult
