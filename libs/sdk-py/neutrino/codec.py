"""User values <-> payload bytes (SPEC.md §3.2): msgpack with `bin` for bytes and `str` for text, never pickle.

What round-trips: None, bool, int (64-bit), float, str, bytes, list, dict. Dict keys may be any of
those scalars, not only str (`{1: "a"}` is valid, SPEC.md §3.2); only keyword argument names must be
str. Tuples are encoded as arrays and come back as lists (msgpack has one array type); subclasses of
those types (IntEnum, namedtuple, ...) are encoded as their base type. Anything else is refused when
it is packed, with the argument named, so the mistake shows at the call site rather than inside a worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from .errors import ProtocolError

__all__ = ["pack_args", "pack_result", "unpack_args", "unpack_catalog", "unpack_result"]

_HINT = "pass plain data: None, bool, int (64-bit), float, str, bytes, and lists/tuples and dicts of those"


def pack_args(args: Iterable[Any], kwargs: Mapping[str, Any]) -> bytes:
    """Encode call arguments as the `[args, kwargs]` payload; TypeError names the argument that failed."""
    args = list(args)
    kwargs = dict(kwargs)
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"keyword argument names must be str, got {key!r} ({type(key).__name__})")
    try:
        payload: bytes = msgpack.packb([args, kwargs], use_bin_type=True)
        return payload
    except (TypeError, ValueError, OverflowError) as exc:
        # Slow path, only on failure: find the culprit so the message can name it.
        raise TypeError(_explain(args, kwargs, exc)) from exc


def unpack_args(payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    """Decode an `[args, kwargs]` payload (the worker's side; here for tests and stub peers)."""
    value = _unpack(payload, "arguments")
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list) and isinstance(value[1], dict)):
        raise ProtocolError(f"arguments payload must be [args: array, kwargs: map], got {type(value).__name__}")
    return value[0], value[1]


def pack_result(value: Any) -> bytes:
    """Encode a return value (the worker's side; here for tests and stub peers)."""
    try:
        payload: bytes = msgpack.packb(value, use_bin_type=True)
        return payload
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"return value of type {type(value).__name__} cannot be encoded ({exc}); {_HINT}") from exc


def unpack_result(payload: bytes) -> Any:
    """Decode a result payload; ProtocolError if it is not valid msgpack."""
    return _unpack(payload, "result")


def unpack_catalog(payload: bytes) -> dict[str, dict[str, Any]]:
    """Decode a task catalog payload (SPEC.md §3.2): a map from task name to its description."""
    value = _unpack(payload, "task catalog")
    if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items())):
        raise ProtocolError("task catalog payload must be a map from task name to a map")
    return value


def _unpack(payload: bytes, what: str) -> Any:
    try:
        # strict_map_key=False: a task may legitimately return {1: "a"}; msgpack carries int keys.
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"{what} payload is not valid msgpack ({exc})") from None


def _explain(args: list[Any], kwargs: dict[str, Any], exc: BaseException) -> str:
    culprits = [(f"positional argument {i}", v) for i, v in enumerate(args)]
    culprits += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in culprits:
        try:
            msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as inner:
            return f"{label} of type {type(value).__name__} cannot be encoded as msgpack ({inner}); {_HINT}"
    return f"arguments cannot be encoded as msgpack ({exc}); {_HINT}"  # pragma: no cover - defensive
