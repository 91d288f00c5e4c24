"""The client side of the frontend link (SPEC.md §4.2), shared by `Client` and `AsyncClient`.

Socket-free: address checks, socket options, request frames, and the mapping of a decoded reply
to a value or an exception. The two clients differ only in how they wait.
"""

from __future__ import annotations

import math
import os
import re
import struct
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import zmq
from neutrino_protocol import (
    CancelTask,
    DescribeTasks,
    MessageType,
    Ping,
    Pong,
    SubmitTask,
    TaskCatalog,
    TaskRejected,
    TaskReply,
    header,
)
from neutrino_protocol import payload as _payload

from . import _tracing
from ._handshake import watch
from .codec import pack_args, unpack_catalog, unpack_result
from .errors import (
    AddressError,
    CatalogNotReadyError,
    HandshakeError,
    NeutrinoTimeoutError,
    NotSupportedError,
    PayloadTooLargeError,
    ProtocolError,
    error_from_reply,
    rejected_error,
)
from .keys import CurveKeys, client_keys
from .keys import apply as apply_keys
from .task import MAX_RETRIES, Task

# SPEC.md §2: ipc socket paths must stay under 107 bytes (sun_path is 108 with the NUL).
_MAX_IPC_PATH = 107
# The orchestrator's default --max-message-bytes (SPEC.md §2), the default for clients too.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 2**20
_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\d{1,5})$")


def check_address(address: str) -> str:
    """Return `address` if a client can connect to it, else raise an error that says what to pass."""
    if not isinstance(address, str):
        raise AddressError(f"address must be a str like 'tcp://host:5555', got {type(address).__name__}")
    scheme, sep, rest = address.partition("://")
    if scheme in ("http", "https") and sep:
        raise NotSupportedError(
            f"{address!r} is an HTTP gateway address, which only the threaded Client speaks: use "
            f"neutrino.Client({address!r}), or connect to an orchestrator frontend (tcp://HOST:PORT)"
        )
    if scheme == "tcp" and sep:
        match = _TCP.match(address)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise AddressError(f"{address!r} is not a tcp address; write tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
        return address
    if scheme == "ipc" and sep:
        if not rest:
            raise AddressError(f"{address!r} has no socket path; write ipc:///path/to/frontend.sock")
        if len(rest.encode()) > _MAX_IPC_PATH:
            raise AddressError(f"ipc socket path is {len(rest.encode())} bytes, over the {_MAX_IPC_PATH}-byte limit")
        return address
    raise AddressError(
        f"unsupported orchestrator address {address!r}; use tcp://HOST:PORT or ipc:///path/to/frontend.sock"
    )


def connect(
    address: str, keys: CurveKeys | None = None
) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes], zmq.Socket[bytes] | None]:
    """A client's own context (one I/O thread), its DEALER, configured and connected, and for a
    tcp:// address the monitor that reports a refused handshake (see _handshake.py)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER)
    configure(sock)
    monitor = None
    if address.startswith("tcp://"):
        if address.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        if keys is not None:
            apply_keys(sock, keys)
        monitor = watch(sock)
    try:
        sock.connect(address)
    except zmq.ZMQError as exc:
        if monitor is not None:
            monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()
        raise AddressError(f"cannot connect to {address!r}: {exc}") from None
    return ctx, sock, monitor


_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


# pyzmq's compiled send: the Python-level `Socket.send` above it only adds the routing_id and group
# arguments of draft socket types, and costs as much again as the send of a small frame.
_send = zmq.backend.Socket.send


def send_nowait(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """One multipart message, never waiting: zmq.Again when the DEALER has no link left (with no
    high-water mark nothing else makes a send wait; see link_gone). Plain `send` calls, because
    send_multipart spends more time on enum flag arithmetic than on sending 2 or 3 small frames."""
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], _SNDMORE_NOBLOCK)
    _send(sock, frames[last], _NOBLOCK)


def recv_ready(sock: zmq.Socket[bytes]) -> list[list[bytes]]:
    """Every message queued on `sock`, leaving it drained: `zmq.EVENTS` shows no POLLIN afterwards,
    so its edge-triggered `zmq.FD` fires on the next arrival (the invariant in _thread_io.py).

    Each `zmq.EVENTS` read makes libzmq check its command mailbox with a syscall, while a `recv`
    that finds a message does not. So after the first message (a call's one reply: asking
    `zmq.EVENTS` again is cheaper than a `recv` that fails) it reads until `zmq.Again` and asks
    once more: a burst of replies costs two syscalls, not one each. Frame objects instead of
    recv_multipart: `.more` is a C attribute, while recv_multipart asks getsockopt(RCVMORE)
    through pyzmq's Python layer per frame."""
    messages: list[list[bytes]] = []
    recv = sock.recv
    while sock.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
        try:
            while True:
                frame = recv(_NOBLOCK, copy=False)
                frames = [frame.bytes]
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                messages.append(frames)
                if len(messages) == 1:
                    break
        except zmq.Again:
            pass
    return messages


def link_gone(address: str, refused: HandshakeError | None) -> HandshakeError:
    """What a send raises when the DEALER has no link left to queue on. With IMMEDIATE off that
    happens only after libzmq gave the connection up for a protocol error in the handshake (a
    refused key, CURVE on one side only): it never reconnects then, and a blocking send would
    wait forever. The monitor usually has the exact cause already (`refused`)."""
    if refused is not None:
        return HandshakeError(str(refused), reason=refused.reason)
    return HandshakeError(
        f"the task pod at {address} gave up the connection during the ZeroMQ handshake, so nothing was sent: "
        "it refused this client's keys or security (CURVE or plain text); check curve_server_key and "
        "curve_client_key (NEUTRINO_CURVE_SERVER_KEY / NEUTRINO_CURVE_CLIENT_KEY) against the pod's",
        reason="refused",
    )


def curve_keys(
    address: str, server_key: str | os.PathLike[str] | None, client_key: str | os.PathLike[str] | None
) -> CurveKeys | None:
    """The CURVE keys of a client for `address`: the arguments, else NEUTRINO_CURVE_*; None for
    plain text, and always for ipc:// (which never leaves the machine). Raises KeyFileError."""
    return client_keys(server_key, client_key) if address.startswith("tcp://") else None


def configure(sock: zmq.Socket[Any]) -> None:
    """Socket options for a client DEALER; why each one is set is next to it."""
    # The orchestrator keys tasks by (client routing identity, id) (SPEC.md §4.2) and routes each
    # reply by that identity. Left unset, libzmq gives the peer a fresh random identity on every
    # (re)connection, so after a TCP reconnect the replies to tasks already in flight would be
    # addressed to the old identity and dropped. Our own identity survives reconnects.
    sock.setsockopt(zmq.ROUTING_ID, new_routing_id())
    # close() must not hang on unsent requests to an orchestrator that is gone.
    sock.setsockopt(zmq.LINGER, 0)
    # 0 = no limit. A full pipe would block (or drop, with NOBLOCK) sends, and the client keeps
    # tens of thousands of submits in flight; backpressure is the orchestrator's TaskRejected{busy}.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    # IMMEDIATE stays off: requests sent before the TCP connection is up wait in the pipe instead
    # of failing, so a client can be created and used before the orchestrator has started.
    sock.setsockopt(zmq.IMMEDIATE, 0)


def new_routing_id() -> bytes:
    """A routing id unique to one client: 14 bytes, never starting with 0x00 (libzmq reserves those)."""
    return b"c-" + uuid.uuid4().bytes[:12]


def check_options(timeout_s: float | None, retries: int | None) -> None:
    """Validate per-call overrides before anything is sent."""
    if timeout_s is not None and (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not (timeout_s > 0 and math.isfinite(timeout_s))
    ):
        raise ValueError(f"timeout_s must be a positive number of seconds or None, got {timeout_s!r}")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES
    ):
        raise ValueError(f"retries must be an int from 0 to {MAX_RETRIES} or None, got {retries!r}")


def check_max_payload(max_payload_bytes: int) -> int:
    """Validate a client's `max_payload_bytes` when the client is created."""
    if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
        raise ValueError(f"max_payload_bytes must be an int >= 1, got {max_payload_bytes!r}")
    return max_payload_bytes


def task_name(name: str | Task[..., Any]) -> str:
    """A task's wire name, from its name or its `Task` object."""
    return name.name if isinstance(name, Task) else name


_SUBMIT_HEADER = header(MessageType.SUBMIT_TASK)
# The payload of a call without arguments, `[[], {}]`: packed once.
NO_ARGS: bytes = _payload.NO_ARGS
_U8, _U16, _U32, _U64 = (struct.Struct(f">B{code}").pack for code in "BHIQ")


def pack_uint(n: int) -> bytes:
    """An unsigned int in msgpack's smallest form (SPEC.md §3.1's canonical form), as msgpack.packb
    writes it, without the cost of a Packer per call. Task ids pass 0xFFFF after the first 65,535
    tasks of a client, so that branch comes first."""
    if 0xFFFF < n <= 0xFFFFFFFF:
        return _U32(0xCE, n)
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return _U8(0xCC, n)
    if n <= 0xFFFF:
        return _U16(0xCD, n)
    return _U64(0xCF, n)


class SubmitEncoder:
    """SubmitTask frames for one task name and one set of per-call options.

    The header and every meta field but `id` are the same for each task, and `id` is the first
    field of the canonical meta map (SPEC.md §3.1), so the meta is packed once with id 0 and split
    around it: a task costs the id's few bytes and two concatenations instead of a message object,
    a dict and a msgpack Packer. The split is taken from neutrino_protocol's own encoding, so the
    bytes cannot drift from it (tests compare the two).
    """

    __slots__ = ("_prefix", "_suffix", "name")

    def __init__(self, name: str, timeout_s: float | None = None, retries: int | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"task name must be a non-empty str, got {name!r}")
        timeout = None if timeout_s is None else float(timeout_s)
        _, meta, _ = SubmitTask(id=0, task=name, timeout_s=timeout, retries=retries, payload=b"").encode()
        # A fixmap header (1 byte: at most 15 fields), the key "id" (3 bytes), the id 0 (1 byte), the rest.
        if meta[1:5] != b"\xa2id\x00":  # pragma: no cover - SubmitTask's first field moved
            raise AssertionError("SubmitTask meta no longer starts with its id")
        self.name = name
        self._prefix = meta[:4]
        self._suffix = meta[5:]

    def frames(self, task_id: int, payload: bytes) -> list[bytes]:
        """The frames of one task, carrying the caller's current span (SPEC.md §4.5) if any."""
        return self.frames_traced(task_id, payload, _tracing.outgoing())

    def frames_traced(self, task_id: int, payload: bytes, trace: tuple[str, str | None] | None) -> list[bytes]:
        """The frames of one task with an explicit `(traceparent, tracestate)` (or none), for a
        sender that keeps each task's trace itself (the gateway, one per run)."""
        meta = self._prefix + pack_uint(task_id) + self._suffix
        if trace is not None:
            meta = _tracing.with_trace(meta, trace)
        return [_SUBMIT_HEADER, meta, payload]


class SubmitFrames:
    """A client's SubmitTask frames for calls without per-call overrides, from a SubmitEncoder
    kept per task name (a client calls a handful of tasks; `CACHE_SIZE` only bounds a misuse)."""

    CACHE_SIZE = 256

    def __init__(self, max_payload_bytes: int) -> None:
        self._encoders: dict[str, SubmitEncoder] = {}
        self._max_payload_bytes = max_payload_bytes

    def __call__(self, task: str, task_id: int, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[bytes]:
        """Raises TypeError (a bad name, an unencodable argument) or PayloadTooLargeError."""
        encoder = self._encoders.get(task)
        if encoder is None:
            encoder = SubmitEncoder(task)
            if len(self._encoders) < self.CACHE_SIZE:
                self._encoders[task] = encoder
        if not args and not kwargs:
            return encoder.frames(task_id, NO_ARGS)
        return encoder.frames(task_id, check_payload(task, pack_args(args, kwargs), self._max_payload_bytes))


def check_payload(name: str, payload: bytes, max_payload_bytes: int) -> bytes:
    """`payload`, unless it is over the client's limit: PayloadTooLargeError, before anything is sent."""
    if len(payload) > max_payload_bytes:
        # Checked here, not left to the orchestrator: it answers `too_large` only up to 4x its
        # --max-message-bytes; past that libzmq drops the connection without a word, and every
        # task in flight on it waits for a reply that never comes.
        raise PayloadTooLargeError(
            f"the arguments of task {name!r} pack to {len(payload)} bytes, over the client's "
            f"max_payload_bytes limit of {max_payload_bytes}; nothing was sent. Pass a reference the "
            "workers can fetch (a URL, an object-store key, a file path) instead of the bytes, or raise "
            "max_payload_bytes together with the orchestrator's --max-message-bytes"
        )
    return payload


def submit_frames(
    task_id: int,
    name: str,
    args: Iterable[Any],
    kwargs: Mapping[str, Any],
    timeout_s: float | None = None,
    retries: int | None = None,
    *,
    max_payload_bytes: int,
) -> list[bytes]:
    """The frames of one SubmitTask. Raises TypeError (unencodable argument) or PayloadTooLargeError
    before anything is sent."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"task name must be a non-empty str, got {name!r}")
    payload = check_payload(name, pack_args(args, kwargs), max_payload_bytes)
    timeout = None if timeout_s is None else float(timeout_s)
    traceparent, tracestate = _tracing.outgoing() or (None, None)
    return SubmitTask(
        id=task_id,
        task=name,
        timeout_s=timeout,
        retries=retries,
        traceparent=traceparent,
        tracestate=tracestate,
        payload=payload,
    ).encode()


def cancel_frames(task_id: int) -> list[bytes]:
    return CancelTask(id=task_id).encode()


def check_task_id(task_id: int) -> int:
    """Validate the argument of `cancel()`: a task id as `TaskFuture.task_id` gives it."""
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        raise TypeError(f"cancel() takes a task id (an int, e.g. future.task_id), got {type(task_id).__name__}")
    return task_id


def ping_frames(nonce: int) -> list[bytes]:
    return Ping(nonce=nonce).encode()


def describe_frames(nonce: int) -> list[bytes]:
    return DescribeTasks(nonce=nonce).encode()


# How long describe() waits before asking again while the orchestrator has no catalog yet:
# doubling from the first value to the second. The zygote builds the catalog within a few
# hundred ms of start, so the first retries are quick; the cap keeps a long wait cheap.
DESCRIBE_RETRY_FIRST_S = 0.02
DESCRIBE_RETRY_MAX_S = 0.5


def outcome(msg: TaskReply | TaskRejected) -> tuple[Any, BaseException | None]:
    """(value, None) for a successful reply, (None, exception) otherwise.

    Returned rather than raised so the reply loops settle thousands of futures without paying
    for a raise/except per task.
    """
    if isinstance(msg, TaskRejected):
        return None, rejected_error(msg.reason, msg.message, msg.id)
    if msg.status == "ok":
        try:
            return unpack_result(msg.payload or b""), None
        except ProtocolError as exc:
            return None, exc
    err = msg.error
    if err is None:  # decode() guarantees it for status "error"; kept total for the type checker
        return None, ProtocolError(f"TaskReply {msg.id} has status {msg.status!r} and no error", kind="meta")
    return None, error_from_reply(err.kind, err.ename, err.evalue, err.traceback, msg.attempts, msg.id)


def catalog_of(msg: TaskCatalog) -> dict[str, dict[str, Any]] | None:
    """What `describe()` returns: the task catalog (SPEC.md TaskCatalog); None while not ready.
    Raises ProtocolError on a payload that is not a map of maps."""
    if not msg.ready:
        return None
    return unpack_catalog(msg.payload or b"")


def describe_timeout(address: str, timeout_s: float, answered: bool) -> NeutrinoTimeoutError:
    """The error `describe()` raises when `timeout_s` ran out; `answered`: whether the orchestrator
    answered at all (then only its catalog was missing)."""
    if answered:
        return CatalogNotReadyError(
            f"orchestrator at {address} has no task catalog yet after {timeout_s}s (its zygote is still "
            "importing the app or building the catalog, or restarting); call describe() again or raise timeout_s"
        )
    return NeutrinoTimeoutError(
        f"orchestrator at {address} did not answer DescribeTasks within {timeout_s}s; check that it is "
        "running, listening on that address, and at least as new as this SDK (protocol revision 1.3)"
    )


def pong_info(msg: Pong) -> dict[str, Any]:
    """What `ping()` returns: the orchestrator's load (SPEC.md Pong)."""
    return {
        "queue_depth": msg.queue_depth,
        "workers": msg.workers,
        "idle_workers": msg.idle_workers,
        "draining": msg.draining,
    }
