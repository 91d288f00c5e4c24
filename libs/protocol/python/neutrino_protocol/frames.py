"""Frames <-> messages: the header frame, canonical meta encoding, and validation (SPEC.md §3)."""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin

import msgpack

PROTOCOL_VERSION = 1
# Largest control-link message body (header + meta), and largest payload record (SPEC.md §3).
CONTROL_MAX_BYTES = 1 << 20
CONTROL_MAX_PAYLOAD_BYTES = 16 << 20
# Longest `traceparent` / `tracestate` (UTF-8 bytes): opaque to the orchestrator, bounded so a
# client cannot make it hold and copy large metadata per attempt (SPEC.md §4.5).
TRACE_MAX_BYTES = 512
_unpackb = msgpack.unpackb
_packb = functools.partial(msgpack.packb, use_bin_type=True)
SIGNATURE = b"NT"


class MessageType(enum.IntEnum):
    SUBMIT_TASK = 0x01
    TASK_ACCEPTED = 0x02
    TASK_REJECTED = 0x03
    TASK_REPLY = 0x04
    CANCEL_TASK = 0x05
    PING = 0x06
    PONG = 0x07
    DESCRIBE_TASKS = 0x08
    TASK_CATALOG = 0x09
    WORKER_READY = 0x10
    TASK_ASSIGNMENT = 0x11
    TASK_RESULT = 0x12
    HEARTBEAT = 0x13
    SHUTDOWN = 0x14
    ZYGOTE_READY = 0x20
    ZYGOTE_FAILED = 0x21
    FORK = 0x22
    FORKED = 0x23
    WORKER_EXITED = 0x24
    ZYGOTE_CATALOG = 0x25


# An unsigned integer that must fit 32 bits (SPEC.md §3.1); plain `int` fields are 64-bit.
U32 = Annotated[int, "u32"]
_U32 = "u32"
# A W3C trace context string, at most TRACE_MAX_BYTES once UTF-8 encoded (SPEC.md §4.5).
TraceStr = Annotated[str, "trace"]
_TRACE = "trace"


class ProtocolError(ValueError):
    """A malformed message. `kind` is the failure class used by the golden vectors."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def header(msg_type: int) -> bytes:
    return SIGNATURE + bytes((PROTOCOL_VERSION, msg_type))


def parse_header(frame: bytes) -> int:
    """Return the message type code of a header frame (which may be an unknown code)."""
    if len(frame) != 4 or frame[:2] != SIGNATURE:
        raise ProtocolError("header", f"bad header frame {bytes(frame[:8]).hex()!r}: expected 4 bytes starting 'NT'")
    if frame[2] != PROTOCOL_VERSION:
        raise ProtocolError(
            "version", f"protocol version {frame[2]} is not supported (this peer speaks {PROTOCOL_VERSION})"
        )
    return frame[3]


class Message:
    """Base of every message dataclass: subclasses set TYPE and, if they carry one, HAS_PAYLOAD."""

    TYPE: ClassVar[MessageType]
    # When the message has a payload frame: "never", "always", "when_ok" (exactly when meta
    # `status` is "ok"), or "when_ready" (exactly when meta `ready` is true).
    PAYLOAD: ClassVar[str] = "never"
    _FIELDS: ClassVar[tuple[tuple[str, Any, bool], ...]] = ()
    _HEADER: ClassVar[bytes] = b""

    def meta(self) -> dict[str, Any]:
        """The meta map in canonical order, absent optional fields left out (generated per class)."""
        raise NotImplementedError

    def encode(self) -> list[bytes]:
        frames = [self._HEADER, _packb(self.meta())]
        if self.PAYLOAD != "never" and self._wants_payload():
            payload = getattr(self, "payload", None)
            if payload is None:
                raise ValueError(f"{type(self).__name__} needs a payload")
            frames.append(payload)
        return frames

    def _wants_payload(self) -> bool:
        rule = self.PAYLOAD
        if rule == "when_ok":
            return getattr(self, "status", None) == "ok"
        if rule == "when_ready":
            return getattr(self, "ready", None) is True
        return rule == "always"


@dataclasses.dataclass(slots=True)
class ErrorInfo:
    """The `Error` structure of SPEC.md §4.1."""

    kind: str
    ename: str
    evalue: str
    traceback: str | None = None

    def to_map(self) -> dict[str, str]:
        out = {"kind": self.kind, "ename": self.ename, "evalue": self.evalue}
        if self.traceback is not None:
            out["traceback"] = self.traceback
        return out

    @classmethod
    def from_map(cls, value: Any) -> ErrorInfo:
        if not isinstance(value, dict):
            raise ProtocolError("meta", "field 'error' must be a map")
        for key in ("kind", "ename", "evalue"):
            if not isinstance(value.get(key), str):
                raise ProtocolError("meta", f"field 'error.{key}' is missing or not a string")
        tb = value.get("traceback")
        if tb is not None and not isinstance(tb, str):
            raise ProtocolError("meta", "field 'error.traceback' must be a string")
        return cls(value["kind"], value["ename"], value["evalue"], tb)


@dataclasses.dataclass(slots=True)
class TaskOptions:
    """A task's decorator defaults, in `ZygoteReady.task_options` (SPEC.md §4.4)."""

    timeout_s: float | None = None
    retries: int | None = None
    retry_backoff_s: float | None = None
    retry_backoff_max_s: float | None = None

    def to_map(self) -> dict[str, Any]:
        return {k: v for k in self.__slots__ if (v := getattr(self, k)) is not None}

    @classmethod
    def from_map(cls, value: Any) -> TaskOptions:
        if not isinstance(value, dict):
            raise ProtocolError("meta", "task options must be a map")
        fields: dict[str, Any] = {}
        for key in cls.__slots__:
            v = value.get(key)
            if v is not None:
                fields[key] = _check(f"task_options.{key}", _U32 if key == "retries" else float, v)
        return cls(**fields)


_REGISTRY: dict[int, type[Message]] = {}
M = TypeVar("M", bound=type[Message])


def message(cls: M) -> M:
    """Register a message dataclass: its field table, header, and generated codec methods.

    Like `dataclasses`, this writes each class's `meta()` and decoder as straight-line code
    (one line per field) because they run for every task on both sides: a generic loop over
    the fields with getattr/isinstance cost about twice as much per message.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    table = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == "payload":
            continue
        tp = hints[f.name]
        required = True
        if get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            required = False
            tp = next(a for a in get_args(tp) if a is not type(None))
        if get_origin(tp) is Annotated:
            tp = next((m for m in tp.__metadata__ if m in (_U32, _TRACE)), get_args(tp)[0])
        table.append((f.name, tp, required))
    cls._FIELDS = tuple(table)
    cls._HEADER = header(cls.TYPE)
    cls.meta = _compile_meta(cls)  # type: ignore[method-assign]
    cls._decode_meta = staticmethod(_compile_decoder(cls))  # type: ignore[attr-defined]
    _REGISTRY[cls.TYPE] = cls
    return cls


# Checks that accept a value without a call; anything else goes through `_field` (slow path).
_FAST_CHECK = {
    int: "type({v}) is int and 0 <= {v} <= 0xFFFFFFFFFFFFFFFF",
    _U32: "type({v}) is int and 0 <= {v} <= 0xFFFFFFFF",
    float: "type({v}) is float",
    str: "type({v}) is str",
    # A str of at most 128 characters is at most 512 bytes; longer ones are measured in `_check`.
    _TRACE: "type({v}) is str and len({v}) <= 128",
    bool: "type({v}) is bool",
}


def _compile_meta(cls: type[Message]) -> Any:
    lines = ["def meta(self):", "    d = {}"]
    for name, kind, required in cls._FIELDS:
        value = "v"
        if kind is ErrorInfo:
            value = "v.to_map()"
        elif get_origin(kind) is dict:  # maps of structures: keys sorted (canonical form)
            value = "{k: v[k].to_map() for k in sorted(v)}"
        lines.append(f"    v = self.{name}")
        lines.append(f"    d[{name!r}] = {value}" if required else f"    if v is not None: d[{name!r}] = {value}")
    lines.append("    return d")
    return _compile(cls, lines, "meta", "The meta map in canonical order, absent optional fields left out.")


def _compile_decoder(cls: type[Message]) -> Any:
    lines = ["def decode_meta(meta, frames):", "    get = meta.get"]
    args = []
    for i, (name, kind, required) in enumerate(cls._FIELDS):
        v = f"v{i}"
        args.append(v)
        lines.append(f"    {v} = get({name!r})")
        fast = _FAST_CHECK.get(kind)
        cond = f"not ({fast.format(v=v)})" if fast else "True"
        if not required:  # absent is valid: skip the checks without a call
            cond = f"{v} is not None and {cond}"
        lines.append(f"    if {cond}: {v} = _field(cls, {name!r}, kinds[{i}], {required}, {v})")
    if cls.PAYLOAD == "when_ok":
        status = args[[n for n, _, _ in cls._FIELDS].index("status")]
        error = args[[n for n, _, _ in cls._FIELDS].index("error")]
        lines.append(f"    _check_status(cls, {status}, {error})")
        lines.append(f"    n = 3 if {status} == 'ok' else 2")
    elif cls.PAYLOAD == "when_ready":
        ready = args[[n for n, _, _ in cls._FIELDS].index("ready")]
        lines.append(f"    n = 3 if {ready} else 2")
    else:
        lines.append(f"    n = {3 if cls.PAYLOAD == 'always' else 2}")
    lines.append("    if len(frames) != n: _bad_count(cls, n, len(frames))")
    if cls.PAYLOAD != "never":
        args.append("bytes(frames[2]) if n == 3 else None")
    lines.append(f"    return cls({', '.join(args)})")
    return _compile(cls, lines, "decode_meta", "Build the message from its decoded meta map and frames.")


def _compile(cls: type[Message], lines: list[str], name: str, doc: str) -> Any:
    scope = {
        "cls": cls,
        "kinds": [k for _, k, _ in cls._FIELDS],
        "_field": _field,
        "_check_status": _check_status,
        "_bad_count": _bad_count,
    }
    exec("\n".join(lines), scope)
    fn: Any = scope[name]
    fn.__qualname__ = f"{cls.__name__}.{name}"
    fn.__doc__ = doc
    return fn


def _field(cls: type[Message], name: str, kind: Any, required: bool, value: Any) -> Any:
    if value is None:
        if required:
            raise ProtocolError("meta", f"{cls.__name__} is missing required field '{name}'")
        return None
    return _check(name, kind, value)


def _check_status(cls: type[Message], status: str, error: ErrorInfo | None) -> None:
    if status == "error":
        if error is None:
            raise ProtocolError("meta", f"{cls.__name__} with status 'error' needs field 'error'")
    elif status != "ok":
        raise ProtocolError("meta", f"{cls.__name__} field 'status' must be 'ok' or 'error'")


def _bad_count(cls: type[Message], want: int, got: int) -> None:
    raise ProtocolError("frame_count", f"{cls.__name__} must have {want} frames, got {got}")


def _check(name: str, kind: Any, value: Any) -> Any:
    if kind is int or kind == _U32:
        bits = 32 if kind == _U32 else 64
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits:
            return value
        raise ProtocolError("meta", f"field '{name}' must be an unsigned {bits}-bit integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ProtocolError("meta", f"field '{name}' must be a number")
    if kind == _TRACE:
        if type(value) is str and len(value.encode()) <= TRACE_MAX_BYTES:
            return value
        raise ProtocolError("meta", f"field '{name}' must be a string of at most {TRACE_MAX_BYTES} bytes")
    if kind is str or kind is bool:
        if type(value) is kind:
            return value
        raise ProtocolError("meta", f"field '{name}' must be a {kind.__name__}")
    if kind is ErrorInfo:
        return ErrorInfo.from_map(value)
    if get_origin(kind) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            item = get_args(kind)[1]
            return {k: item.from_map(v) for k, v in value.items()}
        raise ProtocolError("meta", f"field '{name}' must be a map with string keys")
    if get_origin(kind) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ProtocolError("meta", f"field '{name}' must be an array of strings")
    raise TypeError(f"unsupported field type {kind!r}")  # pragma: no cover - programming error


def decode(frames: list[bytes]) -> Message:
    """Decode a message (routing identity already stripped).

    Raises ProtocolError if it is malformed; an unknown message type raises kind 'type',
    which receivers log and ignore (SPEC.md §4)."""
    if len(frames) not in (2, 3):
        raise ProtocolError("frame_count", f"expected 2 or 3 frames, got {len(frames)}")
    cls = _REGISTRY.get(parse_header(frames[0]))
    if cls is None:
        raise ProtocolError("type", f"unknown message type 0x{frames[0][3]:02x}")
    try:
        meta = _unpackb(frames[1], raw=False)
    except Exception as exc:
        raise ProtocolError("meta", f"meta is not valid msgpack: {exc}") from None
    if type(meta) is not dict:
        raise ProtocolError("meta", "meta must be a msgpack map")
    return cls._decode_meta(meta, frames)  # type: ignore[attr-defined, no-any-return]


def control_payload_follows(code: int) -> bool:
    """Whether a control-link message of this type code is followed by a payload record (SPEC.md §3)."""
    cls = _REGISTRY.get(code)
    return cls is not None and cls.PAYLOAD == "always"


def decode_control(data: bytes, payload: bytes | None = None) -> Message:
    """Decode one control-link message: its body (the bytes after the u32 length prefix) and, for
    the types that carry one (`control_payload_follows`), the payload record that came next."""
    frames = [data[:4], data[4:]]
    if payload is not None:
        frames.append(payload)
    return decode(frames)


def encode_control(msg: Message) -> bytes:
    """Frame a control-link message: u32 big-endian length, header and meta; then, when the
    message has a payload, a second record: u32 big-endian length, payload (SPEC.md §3)."""
    head, meta, *payload = msg.encode()
    body = head + meta
    out = len(body).to_bytes(4, "big") + body
    for record in payload:
        out += len(record).to_bytes(4, "big") + record
    return out
