"""Typed inputs: a model's type hints (`Model.io_types()`) checked with pydantic, one input at a
time, as FastAPI checks a request body; and the V2 tensors those hints describe, for metadata.

A refused input raises `InputRefused` with FastAPI's error list, `[{"loc", "msg", "type"}]`, `loc`
being the path inside the input. The validated value (pydantic's coercions applied: "3" -> 3.0 for
a float, a dict -> a pydantic model) is what `predict` then gets.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from pydantic import TypeAdapter, ValidationError

log = logging.getLogger("neutrino.model_server")

# JSON Schema types that map to one V2 datatype (a float hint is FP64: what Python's float is).
_DATATYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}


class InputRefused(Exception):
    """An input failed its type hint or the model's `validate()`: HTTP 422 for that request alone."""

    def __init__(self, type: str, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{_where(e['loc'])}{e['msg']}" for e in errors))
        self.type, self.errors = type, errors


def _where(loc: list[str | int]) -> str:
    return f"{'.'.join(str(p) for p in loc)}: " if loc else ""


def adapter(model: str, hint: Any) -> TypeAdapter[Any] | None:
    """The hint's validator, built once per server; None when there is nothing to check (`Any`) or
    pydantic cannot check that type (say `np.ndarray`), which is logged: inputs then go unchecked."""
    if hint is Any:
        return None
    try:
        return TypeAdapter(hint)
    except Exception as exc:
        log.warning("model %s: inputs go unchecked, pydantic cannot validate the hint %r (%s)", model, hint, exc)
        return None


def errors_of(exc: ValidationError) -> list[dict[str, Any]]:
    """FastAPI's `detail` entries for a pydantic error (without the offending input, which may be large)."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False)]


def tensors(hint: Any, default_name: str) -> list[dict[str, Any]]:
    """The V2 tensors `{name, datatype, shape}` (batch dimension -1 first) of one input or output of
    type `hint`: one per field of a pydantic model, dataclass or TypedDict, else one named
    `default_name`; [] when a part has no single datatype (a union, `Any`, a free-form dict)."""
    if hint is Any:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            schema = TypeAdapter(hint).json_schema()
    except Exception:
        return []
    defs = schema.get("$defs", {})
    schema = _resolve(schema, defs)
    if schema.get("type") == "object":
        fields = schema.get("properties", {})
        found = [_tensor(name, _resolve(field, defs), defs) for name, field in fields.items()]
        return [t for t in found if t is not None] if fields and None not in found else []
    one = _tensor(default_name, schema, defs)
    return [one] if one is not None else []


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: dict[str, Any] = defs.get(ref.removeprefix("#/$defs/"), {})
        return resolved
    return schema


def _tensor(name: str, schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    shape = [-1]
    while schema.get("type") == "array" and "prefixItems" not in schema:
        size = schema.get("minItems")
        shape.append(size if isinstance(size, int) and size == schema.get("maxItems") else -1)
        schema = _resolve(schema.get("items", {}), defs)
    datatype = _DATATYPES.get(str(schema.get("type")))
    return None if datatype is None else {"name": name, "datatype": datatype, "shape": shape}
