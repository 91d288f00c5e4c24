"""What goes in and out of the HTTP API as bytes: request bodies (JSON, msgpack, JSON under curl's
form type), query parameters, content negotiation of answers, and a task's named arguments packed
as the payload a worker gets (SPEC.md §3.2, neutrino_protocol.payload).

JSON by default; msgpack when the body is `application/msgpack`, and in answers when `Accept`
asks for it (or the body was msgpack and `Accept` says nothing). In JSON answers, values JSON
cannot hold are converted: bytes become base64 text.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any, NoReturn

import msgpack
from aiohttp import web
from neutrino_protocol import payload

from . import errors
from .catalog import INT_MAX, INT_MIN
from .errors import ApiError

MSGPACK = "application/msgpack"
# An answer's headers as `content_type=` makes them, without parsing the type for each answer.
JSON_HEADERS = {"Content-Type": "application/json"}
MSGPACK_HEADERS = {"Content-Type": MSGPACK}
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")
FORM = "application/x-www-form-urlencoded"
# A query parameter declared as a number: what JSON Schema calls one, written out in decimal. Not
# Python's wider float() syntax ("1_0", "inf", "nan", " 5"), which the document does not allow.
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


async def read_object(request: web.Request) -> dict[str, Any]:
    """The body as the object of a task's named arguments (empty: `{}`); 400 or 415 otherwise."""
    raw = await request.read()
    if not raw:
        body: Any = {}
    elif request.content_type in MSGPACK_TYPES:
        try:
            # An HTTP body, not a payload: string map keys only, as in JSON.
            body = msgpack.unpackb(raw, raw=False)
        except Exception as exc:
            raise errors.bad_request(f"the body is not valid msgpack: {exc}") from None
    elif request.content_type in (
        "application/json",
        "application/octet-stream",
        "",
    ) or request.content_type.endswith("+json"):
        try:
            body = _json_loads(raw)
        except (ValueError, RecursionError) as exc:
            raise errors.bad_request(f"the body is not valid JSON: {exc}") from None
    elif request.content_type == FORM and (body := _json_object(raw)) is not None:
        pass  # `curl -d '{...}'`: JSON under curl's default type
    else:
        raise ApiError(415, "unsupported_media_type", f"send application/json or {MSGPACK}, not {request.content_type}")
    if not isinstance(body, dict):
        raise errors.bad_request(f"the body must be an object of the task's named arguments, not {type(body).__name__}")
    return body


def _json_loads(raw: bytes) -> Any:
    """json.loads(raw), without its look at the bytes for UTF-16 or UTF-32 when they are UTF-8 (the
    only encoding RFC 8259 allows between systems): some 0.6 µs of a ~1 µs `{}`. Anything else
    (another encoding, a BOM, bad JSON) goes to json.loads itself, for its answer and its error."""
    try:
        return _JSON_DECODE(raw.decode())
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return json.loads(raw)


def wants_msgpack(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    if MSGPACK_TYPES[0] in accept or MSGPACK_TYPES[1] in accept:
        return True
    return (not accept or accept == "*/*") and request.content_type in MSGPACK_TYPES


def respond(request: web.Request, body: dict[str, Any], status: int = 200) -> web.Response:
    """`body` as JSON or msgpack, as the request negotiated."""
    if wants_msgpack(request):
        return web.Response(body=msgpack.packb(body, use_bin_type=True), status=status, headers=MSGPACK_HEADERS)
    return web.Response(body=json_bytes(body), status=status, headers=JSON_HEADERS)


def json_bytes(body: Any) -> bytes:
    return _JSON.encode(body).encode()


def number(
    query: Any,
    name: str,
    default: float | None,
    *,
    minimum: float,
    maximum: float | None = None,
    exclusive: bool = False,
) -> Any:
    raw = query.get(name)
    if raw is None:
        return default
    if not _NUMBER.fullmatch(raw):
        raise _query_error(name, f"must be a number, got {raw!r}", "float_parsing")
    value = float(raw)
    if not math.isfinite(value):
        # "1e400" is a JSON number, but no float holds it: it would become infinity.
        raise _query_error(
            name, f"must be a finite number, got {raw!r} (beyond a 64-bit float's range)", "finite_number"
        )
    if value < minimum or (exclusive and value == minimum):
        raise _query_error(name, f"must be {'above' if exclusive else 'at least'} {minimum:g}", "greater_than")
    if maximum is not None and value > maximum:
        raise _query_error(name, f"must be at most {maximum:g}", "less_than_equal")
    return value


def integer(query: Any, name: str, default: int | None, *, minimum: int, maximum: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    # JSON Schema's integer is a number with no fractional part: 2 and 2.0 are both integers.
    value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
    if not (math.isfinite(value) and value.is_integer()):
        raise _query_error(name, f"must be an integer, got {raw!r}", "int_parsing")
    if not minimum <= int(value) <= maximum:
        raise _query_error(name, f"must be from {minimum} to {maximum}", "range")
    return int(value)


def pack_kwargs(kwargs: dict[str, Any]) -> bytes:
    """The `[args, kwargs]` payload (SPEC.md §3.2); 422 naming the argument msgpack cannot carry.

    Checked against the published schema first, an integer outside 64 bits can only be left where the
    schema says `number` (integers and open values are bounded there, catalog.py): it goes as the
    float it also is, as JSON readers take a number that wide."""
    if not kwargs:
        return _NO_ARGS
    try:
        return payload.pack_args((), kwargs)
    except TypeError as exc:
        if not isinstance(exc.__cause__, OverflowError):
            _refuse(kwargs, exc)
    kwargs = _wide_ints_as_floats(kwargs)
    try:
        return payload.pack_args((), kwargs)
    except TypeError as exc:
        _refuse(kwargs, exc)


_NO_ARGS = payload.pack_args((), {})  # a call with no arguments, the common case of many tasks


def _refuse(kwargs: dict[str, Any], exc: TypeError) -> NoReturn:
    """The 422 for arguments that cannot be packed: one problem per argument msgpack refuses."""
    problems = []
    pack = payload.new_packer().pack
    for name, value in kwargs.items():
        try:
            pack(value)
        except (TypeError, ValueError, OverflowError) as bad:
            problems.append({"loc": ["body", name], "msg": f"cannot be sent to a worker: {bad}", "type": "value_error"})
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    raise errors.validation_failed(problems or [{"loc": ["body"], "msg": str(cause), "type": "value_error"}]) from None


def _wide_ints_as_floats(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        try:
            return float(value)
        except OverflowError:
            return value  # past any float too: refused below, naming the argument
    if isinstance(value, dict):
        return {key: _wide_ints_as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wide_ints_as_floats(item) for item in value]
    return value


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """`raw` as a JSON object, or None when it is not one (a real form body, `a=1&b=2`)."""
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# One encoder for every answer: json.dumps with options makes a new one per call.
_JSON_DECODE = json.JSONDecoder().decode
_JSON = json.JSONEncoder(default=_json_default, separators=(",", ":"))


def _query_error(name: str, message: str, type_: str) -> ApiError:
    return errors.validation_failed([{"loc": ["query", name], "msg": message, "type": type_}])
