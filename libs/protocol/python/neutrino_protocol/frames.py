"""Frames <-> messages: the header frame, canonical meta encoding, and validation (SPEC.md §3)."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

import msgpack

PROTOCOL_VERSION = 1
SIGNATURE = b"NT"


class MessageType(enum.IntEnum):
    SUBMIT_TASK = 0x01
    TASK_ACCEPTED = 0x02
    TASK_REJECTED = 0x03
    TASK_REPLY = 0x04
    CANCEL_TASK = 0x05
    PING = 0x06
    PONG = 0x07
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
        raise ProtocolError("version", f"protocol version {frame[2]} is not supported (this peer speaks {PROTOCOL_VERSION})")
    return frame[3]


class Message:
    """Base of every message dataclass: subclasses set TYPE and, if they carry one, HAS_PAYLOAD."""

    TYPE: ClassVar[MessageType]
    # "never", "always", or "when_ok" (a payload frame exactly when meta status is "ok")
    PAYLOAD: ClassVar[str] = "never"
    _FIELDS: ClassVar[tuple[tuple[str, Any, bool], ...]] = ()
    _HEADER: ClassVar[bytes] = b""

    def meta(self) -> dict[str, Any]:
        """The meta map in canonical order, optional fields that are None left out."""
        out: dict[str, Any] = {}
        for name, kind, _required in self._FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = value.to_map() if kind is ErrorInfo else value
        return out

    def encode(self) -> list[bytes]:
        frames = [self._HEADER, msgpack.packb(self.meta(), use_bin_type=True)]
        if self._wants_payload(getattr(self, "status", None)):
            payload = getattr(self, "payload", None)
            if payload is None:
                raise ValueError(f"{type(self).__name__} needs a payload")
            frames.append(payload)
        return frames

    @classmethod
    def _wants_payload(cls, status: Any) -> bool:
        return cls.PAYLOAD == "always" or (cls.PAYLOAD == "when_ok" and status == "ok")


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


_REGISTRY: dict[int, type[Message]] = {}
M = TypeVar("M", bound=type[Message])


def message(cls: M) -> M:
    """Register a message dataclass: compute its field table and header once."""
    hints = typing.get_type_hints(cls)
    table = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == "payload":
            continue
        tp = hints[f.name]
        required = True
        if get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            required = False
            tp = next(a for a in get_args(tp) if a is not type(None))
        table.append((f.name, tp, required))
    cls._FIELDS = tuple(table)
    cls._HEADER = header(cls.TYPE)
    _REGISTRY[cls.TYPE] = cls
    return cls


def _check(name: str, kind: Any, value: Any) -> Any:
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ProtocolError("meta", f"field '{name}' must be an unsigned integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ProtocolError("meta", f"field '{name}' must be a number")
    if kind is str or kind is bool:
        if type(value) is kind:
            return value
        raise ProtocolError("meta", f"field '{name}' must be a {kind.__name__}")
    if kind is ErrorInfo:
        return ErrorInfo.from_map(value)
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
    code = parse_header(frames[0])
    cls = _REGISTRY.get(code)
    if cls is None:
        raise ProtocolError("type", f"unknown message type 0x{code:02x}")
    try:
        meta = msgpack.unpackb(frames[1], raw=False)
    except Exception as exc:
        raise ProtocolError("meta", f"meta is not valid msgpack: {exc}") from None
    if not isinstance(meta, dict):
        raise ProtocolError("meta", "meta must be a msgpack map")
    kwargs: dict[str, Any] = {}
    for name, kind, required in cls._FIELDS:
        value = meta.get(name)
        if value is None:
            if required:
                raise ProtocolError("meta", f"{cls.__name__} is missing required field '{name}'")
            continue
        kwargs[name] = _check(name, kind, value)
    status = kwargs.get("status")
    if cls.PAYLOAD == "when_ok":
        if status not in ("ok", "error"):
            raise ProtocolError("meta", f"{cls.__name__} field 'status' must be 'ok' or 'error'")
        if status == "error" and "error" not in kwargs:
            raise ProtocolError("meta", f"{cls.__name__} with status 'error' needs field 'error'")
    wants = cls._wants_payload(status)
    if len(frames) != (3 if wants else 2):
        raise ProtocolError("frame_count", f"{cls.__name__} must have {3 if wants else 2} frames, got {len(frames)}")
    if wants:
        kwargs["payload"] = bytes(frames[2])
    return cls(**kwargs)


def decode_control(data: bytes) -> Message:
    """Decode one control-link message body (the bytes after the u32 length prefix)."""
    return decode([data[:4], data[4:]])


def encode_control(msg: Message) -> bytes:
    """Frame a control-link message: u32 big-endian length, header, meta (SPEC.md §3)."""
    head, meta = msg.encode()
    body = head + meta
    return len(body).to_bytes(4, "big") + body
