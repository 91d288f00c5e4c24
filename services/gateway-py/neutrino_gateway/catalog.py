"""The tasks the gateway can run, learned from the task pods (SPEC.md `TaskCatalog`), and argument checks.

Each task comes with JSON Schemas of its parameters and result, which the workers' SDK made from
the function's signature with pydantic. The gateway keeps no copy of user code: it checks request
bodies against the parameters schema (jsonschema, one compiled validator per task) and answers
422 with FastAPI-shaped field errors before anything is recorded or sent.

The schema checked is the one /openapi.json publishes, exactly. pydantic's schemas name their
shared parts in `$defs` and point at them with `#/$defs/Name`, which inside an OpenAPI document
resolves against the document's root, where there is no `$defs`: readers of the document (client
generators, schemathesis) could not resolve those parts and took them as "anything", so the
document and the check disagreed. Each task's definitions are published as components
(`#/components/schemas/<task>.<Name>`) with every reference rewritten to point there, and the
validator checks the same rewritten schema, the same components beside it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

log = logging.getLogger("neutrino.gateway")

# msgpack bodies carry bytes where pydantic's schema says {"type": "string", "format": "binary"}.
_TYPES = Draft202012Validator.TYPE_CHECKER.redefine("string", lambda _checker, value: isinstance(value, (str, bytes)))
_Validator = jsonschema.validators.extend(Draft202012Validator, type_checker=_TYPES)  # type: ignore[no-untyped-call]


_DEFS = "#/$defs/"
COMPONENTS = "#/components/schemas/"
_COMPONENT_NAME = re.compile(r"[^A-Za-z0-9._-]")  # OpenAPI's rule for component names


def _rewrite_refs(value: Any, names: dict[str, str]) -> Any:
    """`value` with every `#/$defs/Name` reference pointing at its component instead."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str) and item.startswith(_DEFS) and item[len(_DEFS) :] in names:
                out[key] = COMPONENTS + names[item[len(_DEFS) :]]
            else:
                out[key] = _rewrite_refs(item, names)
        return out
    if isinstance(value, list):
        return [_rewrite_refs(item, names) for item in value]
    return value


# msgpack, the wire to the workers, carries integers from -2^63 to 2^64-1 and no wider (SPEC.md §3.2):
# a body with a wider one cannot be sent. The published schema says so where an integer can appear:
# typed integers get these bounds, and a value the task's schema leaves open (`Any`, a `dict`, the
# extra keys of a model) is a `MsgpackValue`, whose integers have them at any depth. A `number`
# needs no bound: a wider integer there is sent as the float it also is (runs.pack_kwargs).
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
VALUE = "MsgpackValue"
VALUE_REF = {"$ref": COMPONENTS + VALUE}
VALUE_SCHEMA: dict[str, Any] = {
    "description": "Any JSON value whose integers (numbers without a fraction) are within -2^63 to 2^64-1, "
    "which is what msgpack carries to a worker",
    "anyOf": [
        {"type": ["null", "boolean", "string"]},
        {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": VALUE_REF},
        {"type": "object", "additionalProperties": VALUE_REF},
    ],
}
_COMBINATORS = ("anyOf", "oneOf", "allOf")
_CONSTRAINING = frozenset({"type", "$ref", "enum", "const", "not", *_COMBINATORS})


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    return {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else set()


def msgpack_bounded(schema: Any) -> Any:
    """`schema` narrowed to what msgpack can carry: integers within 64 bits, at any depth."""
    if schema is True:
        return dict(VALUE_REF)
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {name: msgpack_bounded(item) for name, item in out[key].items()}
    for key in ("additionalProperties", "items", "unevaluatedProperties"):
        if key in out:
            out[key] = msgpack_bounded(out[key])
    for key in ("prefixItems", *_COMBINATORS):
        if isinstance(out.get(key), list):
            out[key] = [msgpack_bounded(item) for item in out[key]]
    types = _types(out)
    if "integer" in types:
        if not isinstance(out.get("minimum"), (int, float)) or out["minimum"] < INT_MIN:
            out["minimum"] = INT_MIN
        if not isinstance(out.get("maximum"), (int, float)) or out["maximum"] > INT_MAX:
            out["maximum"] = INT_MAX
    is_object = "object" in types or ("properties" in out and not types)
    if is_object and "additionalProperties" not in out and "unevaluatedProperties" not in out:
        out["additionalProperties"] = dict(VALUE_REF)
    if "array" in types and "items" not in out:
        out["items"] = dict(VALUE_REF)
    if not (_CONSTRAINING & out.keys()) and "properties" not in out:
        out["$ref"] = VALUE_REF["$ref"]  # `Any`, maybe with a title or a default
    return out


def publishable(task: str, schema: dict[str, Any], taken: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`schema` as an OpenAPI document can hold it: its `$defs` moved out as components named
    `<task>.<Name>` (unique among `taken`, which grows), references rewritten. Returns the schema
    and its components."""
    defs = schema.get("$defs")
    if not isinstance(defs, dict) or not defs:
        return schema, {}
    names: dict[str, str] = {}
    for name in defs:
        base = _COMPONENT_NAME.sub("_", f"{task}.{name}")
        unique, n = base, 1
        while unique in taken:
            n += 1
            unique = f"{base}_{n}"
        taken.add(unique)
        names[str(name)] = unique
    components = {names[str(name)]: _rewrite_refs(definition, names) for name, definition in defs.items()}
    body = _rewrite_refs({key: value for key, value in schema.items() if key != "$defs"}, names)
    return body, components


@dataclass(slots=True)
class TaskInfo:
    name: str
    params: dict[str, Any]
    result: dict[str, Any]
    doc: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    validator: Any = None
    # What /openapi.json publishes, and what the validator checks: `params` with its `$defs` moved
    # to `components` (their names in the document's components/schemas) and references rewritten.
    body: dict[str, Any] = field(default_factory=dict)
    result_body: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)
    # Whether `{}` fits, checked once: a task without required arguments is mostly called with none,
    # and walking the schema for an empty body costs as much as a run's JSON encoding.
    empty_body_fits: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.empty_body_fits = self.validator is not None and bool(self.validator.is_valid({}))

    def errors(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """FastAPI-shaped errors (`loc`, `msg`, `type`) for `body`; empty when it fits."""
        if self.validator is None or (not body and self.empty_body_fits):
            return []
        found = []
        for error in sorted(self.validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
            loc: list[Any] = ["body", *error.absolute_path]
            if error.validator == "required":
                missing = error.message.split("'")[1] if "'" in error.message else None
                found.append({"loc": [*loc, missing] if missing else loc, "msg": "Field required", "type": "missing"})
            elif error.validator == "additionalProperties":
                found.append({"loc": loc, "msg": error.message, "type": "extra_forbidden"})
            else:
                found.append({"loc": loc, "msg": error.message, "type": str(error.validator)})
        return found

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "doc": self.doc,
            "params": self.params,
            "result": self.result,
            "options": self.options,
        }


class Catalog:
    """Task name -> TaskInfo, merged from every task pod's catalog (pods run the same app)."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskInfo] = {}
        self.sources: set[str] = set()  # pods whose catalog arrived
        self.version = 0  # bumped on every change, so the OpenAPI document is rebuilt only then
        self._component_names: set[str] = set()

    @property
    def known(self) -> bool:
        return bool(self.sources)

    def get(self, name: str) -> TaskInfo | None:
        return self.tasks.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.tasks

    def update(self, source: str, entries: dict[str, Any]) -> None:
        changed = False
        for name, entry in entries.items():
            if not isinstance(name, str) or not isinstance(entry, dict):
                log.warning("task pod %s: ignoring a malformed catalog entry for %r", source, name)
                continue
            params: dict[str, Any] = entry["params"] if isinstance(entry.get("params"), dict) else {}
            result: dict[str, Any] = entry["result"] if isinstance(entry.get("result"), dict) else {}
            current = self.tasks.get(name)
            if current is not None and current.params == params and current.result == result:
                continue
            if current is not None:
                self._component_names.difference_update(current.components)
            body, components = publishable(name, params, self._component_names)
            body = msgpack_bounded(body or {"type": "object"})  # no schema (not the SDK's): any object
            components = {key: msgpack_bounded(value) for key, value in components.items()}
            components[VALUE] = VALUE_SCHEMA
            result_body, result_components = publishable(f"{name}.result", result, self._component_names)
            # The published schema with its components beside it, where its `#/components/schemas/...`
            # references find them (an unknown keyword, ignored by JSON Schema itself).
            checked = {**body, "components": {"schemas": components}} if components else body
            try:
                Draft202012Validator.check_schema(checked)
                validator = _Validator(checked)
            except jsonschema.SchemaError as exc:
                log.warning(
                    "task pod %s: task %r has an invalid parameter schema (%s); not checked", source, name, exc.message
                )
                validator = None
            self.tasks[name] = TaskInfo(
                name=name,
                params=params,
                result=result,
                doc=str(entry.get("doc") or ""),
                options=dict(entry.get("options") or {}),
                validator=validator,
                body=body,
                result_body=result_body,
                components={**components, **result_components},
            )
            changed = True
        if source not in self.sources:
            self.sources.add(source)
            changed = True
        if changed:
            self.version += 1
            log.info("task catalog from %s: %s", source, ", ".join(sorted(self.tasks)) or "(no tasks)")
