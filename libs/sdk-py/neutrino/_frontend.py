"""The client side of the frontend link (SPEC.md §4.2), shared by `Client` and `AsyncClient`.

Socket-free: address checks, socket options, request frames, and the mapping of a decoded reply
to a value or an exception. The two clients differ only in how they wait.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import zmq
from neutrino_protocol import CancelTask, DescribeTasks, Ping, Pong, SubmitTask, TaskCatalog, TaskRejected, TaskReply

from ._handshake import watch
from .app import MAX_RETRIES, Task
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


def send_nowait(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """One multipart message, never waiting: zmq.Again when the DEALER has no link left (with no
    high-water mark nothing else makes a send wait; see link_gone). Plain `send` calls, because
    send_multipart spends more time on enum flag arithmetic than on sending 2 or 3 small frames."""
    send = sock.send
    for frame in frames[:-1]:
        send(frame, _SNDMORE_NOBLOCK)
    send(frames[-1], _NOBLOCK)


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
    payload = pack_args(args, kwargs)
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
    timeout = None if timeout_s is None else float(timeout_s)
    return SubmitTask(id=task_id, task=name, timeout_s=timeout, retries=retries, payload=payload).encode()


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
