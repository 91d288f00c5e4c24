"""Payloads (SPEC.md §3.2): user values <-> msgpack bytes for arguments, results and the task catalog.

The one implementation of the payload codec: the SDK, the worker and the gateway pack and unpack
payloads here (hot paths may keep a bound `new_packer().pack` or `msgpack.unpackb` with
`UNPACK_OPTIONS`), so every side agrees on the options. vectors/payload.json pins the bytes.

What round-trips: None, bool, int (64-bit), float, str, bytes, list, dict. Map keys may be any of
those scalars, not only str (`{1: "a"}` is valid); only keyword argument names must be str.
Tuples are encoded as arrays and come back as lists (msgpack has one array type); subclasses of
those types (IntEnum, namedtuple, ...) are encoded as their base type. Anything else is refused
when it is packed, with the argument named, so the mistake shows at the call site rather than
inside a worker. Pickle is never used.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import msgpack

from .frames import ProtocolError

__all__ = [
    "NONE",
    "NO_ARGS",
    "PACK_OPTIONS",
    "UNPACK_OPTIONS",
    "PayloadError",
    "new_packer",
    "pack_args",
    "pack_catalog",
    "pack_result",
    "unpack_args",
    "unpack_catalog",
    "unpack_result",
    "unpack_value",
]

# Encoders: bytes as `bin`, text as `str`, so the two stay distinct.
PACK_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({"use_bin_type": True})
# Decoders: `str` as str and `bin` as bytes; strict_map_key=False because a task may legitimately
# return {1: "a"} and msgpack carries int keys (SPEC.md §3.2: decoders MUST NOT restrict keys).
UNPACK_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({"raw": False, "strict_map_key": False})
# What msgpack raises for a value it cannot encode (an unknown type, an int over 64 bits, ...).
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError)
_packb = functools.partial(msgpack.packb, **PACK_OPTIONS)
_unpackb = functools.partial(msgpack.unpackb, **UNPACK_OPTIONS)
_HINT = "pass plain data: None, bool, int (64-bit), float, str, bytes, and lists/tuples and dicts of those"


class PayloadError(ProtocolError):
    """A payload that cannot be decoded: `kind` is `msgpack` (not valid msgpack) or `shape`
    (valid msgpack, but not the structure §3.2 specifies), as in vectors/payload.json."""


def new_packer() -> msgpack.Packer:
    """A Packer with the payload options, for a hot path that packs many values (one per thread:
    a Packer is not thread-safe; it resets itself after each pack, even a failed one)."""
    return msgpack.Packer(**PACK_OPTIONS)


def pack_args(args: Iterable[Any], kwargs: Mapping[str, Any]) -> bytes:
    """Encode call arguments as the `[args, kwargs]` payload; TypeError names the argument that failed."""
    args = list(args)
    kwargs = dict(kwargs)
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"keyword argument names must be str, got {key!r} ({type(key).__name__})")
    try:
        payload: bytes = _packb([args, kwargs])
        return payload
    except _ENCODE_ERRORS as exc:
        # Slow path, only on failure: find the culprit so the message can name it.
        raise TypeError(_explain(args, kwargs, exc)) from exc


def unpack_args(payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    """Decode an `[args, kwargs]` payload; PayloadError if it is not valid msgpack or not that shape."""
    value = unpack_value(payload, "arguments")
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list) and isinstance(value[1], dict)):
        raise PayloadError("shape", f"arguments payload must be [args: array, kwargs: map], got {type(value).__name__}")
    return value[0], value[1]


def pack_result(value: Any) -> bytes:
    """Encode a return value; TypeError if msgpack cannot encode it."""
    try:
        payload: bytes = _packb(value)
        return payload
    except _ENCODE_ERRORS as exc:
        raise TypeError(f"return value of type {type(value).__name__} cannot be encoded ({exc}); {_HINT}") from exc


def unpack_result(payload: bytes) -> Any:
    """Decode a result payload (any msgpack value; map keys of any type); PayloadError if it is not valid msgpack."""
    return unpack_value(payload, "result")


def pack_catalog(catalog: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Encode a task catalog: a map from task name to its `TaskEntry` (§3.2), in the catalog's order."""
    for name, entry in catalog.items():
        if not (isinstance(name, str) and isinstance(entry, Mapping)):
            raise TypeError(f"a task catalog maps task names (str) to maps, got {name!r}: {type(entry).__name__}")
    payload: bytes = _packb(catalog)
    return payload


def unpack_catalog(payload: bytes) -> dict[str, dict[str, Any]]:
    """Decode a task catalog payload (SPEC.md §3.2): a map from task name to its description."""
    value = unpack_value(payload, "task catalog")
    if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items())):
        raise PayloadError("shape", "task catalog payload must be a map from task name to a map")
    return value


def unpack_value(payload: bytes, what: str) -> Any:
    """Decode any msgpack value with the payload options; `what` names it in the PayloadError."""
    try:
        return _unpackb(payload)
    except Exception as exc:
        raise PayloadError("msgpack", f"{what} payload is not valid msgpack ({exc})") from None


def _explain(args: list[Any], kwargs: dict[str, Any], exc: BaseException) -> str:
    culprits = [(f"positional argument {i}", v) for i, v in enumerate(args)]
    culprits += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in culprits:
        try:
            _packb(value)
        except _ENCODE_ERRORS as inner:
            return f"{label} of type {type(value).__name__} cannot be encoded as msgpack ({inner}); {_HINT}"
    return f"arguments cannot be encoded as msgpack ({exc}); {_HINT}"  # pragma: no cover - defensive


NO_ARGS: Final[bytes] = pack_args((), {})  # the payload of a call without arguments
NONE: Final[bytes] = b"\xc0"  # the payload of a None result
