"""The tasks the gateway can run, learned from the task pods (SPEC.md `TaskCatalog`), and argument checks.

Each task comes with JSON Schemas of its parameters and result, which the workers' SDK made from
the function's signature with pydantic. The gateway keeps no copy of user code: it checks request
bodies against the parameters schema (jsonschema, one compiled validator per task) and answers
422 with FastAPI-shaped field errors before anything is recorded or sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

log = logging.getLogger("neutrino.gateway")

# msgpack bodies carry bytes where pydantic's schema says {"type": "string", "format": "binary"}.
_TYPES = Draft202012Validator.TYPE_CHECKER.redefine("string", lambda _checker, value: isinstance(value, (str, bytes)))
_Validator = jsonschema.validators.extend(Draft202012Validator, type_checker=_TYPES)  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class TaskInfo:
    name: str
    params: dict[str, Any]
    result: dict[str, Any]
    doc: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    validator: Any = None

    def errors(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """FastAPI-shaped errors (`loc`, `msg`, `type`) for `body`; empty when it fits."""
        if self.validator is None:
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

    @property
    def known(self) -> bool:
        return bool(self.sources)

    def get(self, name: str) -> TaskInfo | None:
        return self.tasks.get(name)

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
            try:
                Draft202012Validator.check_schema(params)
                validator = _Validator(params)
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
            )
            changed = True
        if source not in self.sources:
            self.sources.add(source)
            changed = True
        if changed:
            self.version += 1
            log.info("task catalog from %s: %s", source, ", ".join(sorted(self.tasks)) or "(no tasks)")
