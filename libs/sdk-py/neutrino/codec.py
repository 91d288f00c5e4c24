"""User values <-> payload bytes (SPEC.md §3.2), as the SDK sees them: neutrino_protocol.payload,
with undecodable payloads raised as the SDK's own `neutrino.errors.ProtocolError`.

The codec itself (msgpack with `bin` for bytes and `str` for text, never pickle; what round-trips;
the error naming an argument that cannot be encoded) lives in neutrino_protocol.payload, shared
with the worker and the gateway.
"""

from __future__ import annotations

from typing import Any

from neutrino_protocol import payload as _payload
from neutrino_protocol.payload import pack_args, pack_result

from .errors import ProtocolError

__all__ = ["pack_args", "pack_result", "unpack_args", "unpack_catalog", "unpack_result"]


def unpack_args(payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    """Decode an `[args, kwargs]` payload (the worker's side; here for tests and stub peers)."""
    try:
        return _payload.unpack_args(payload)
    except _payload.PayloadError as exc:
        raise ProtocolError(str(exc)) from None


def unpack_result(payload: bytes) -> Any:
    """Decode a result payload; ProtocolError if it is not valid msgpack."""
    try:
        return _payload.unpack_result(payload)
    except _payload.PayloadError as exc:
        raise ProtocolError(str(exc)) from None


def unpack_catalog(payload: bytes) -> dict[str, dict[str, Any]]:
    """Decode a task catalog payload (SPEC.md §3.2): a map from task name to its description."""
    try:
        return _payload.unpack_catalog(payload)
    except _payload.PayloadError as exc:
        raise ProtocolError(str(exc)) from None
