"""What a task looks like from outside: JSON Schemas of its parameters and result, its summary and options.

The zygote sends this catalog to the orchestrator (`ZygoteCatalog`, SPEC.md §4.4), which hands it
to clients that ask (`TaskCatalog`): the HTTP gateway validates request bodies and writes its API
description from it without a copy of the user's code. One entry per task, plain data (msgpack-able):

    {"params": {...}, "result": {...}, "doc": "...", "options": {...}, "http": True, "positional_only": []}

- `params`: a JSON Schema object of the named arguments (`title` is the task name); a parameter
  without an annotation, or whose type pydantic cannot describe, accepts anything (`{}` plus its title).
- `result`: the JSON Schema of the return annotation, `{}` when there is none or it cannot be described.
- `doc`: the docstring's first paragraph, `""` without one.
- `options`: the decorator options that differ from their defaults (`timeout_s`, `retries`,
  `retry_on`, `retry_backoff_s`, `retry_backoff_max_s`).
- `http`: whether named arguments alone can call the task; false when it has a required
  positional-only parameter (`def f(x, /)`), which the HTTP API cannot pass.
- `positional_only`: the positional-only parameters, left out of `params`.

Schemas come from pydantic v2, imported on first use: `import neutrino` stays cheap, and a zygote
pays for pydantic only once its first workers are forked.
"""

from __future__ import annotations

import inspect
import logging
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

from .task import DEFAULT_RETRY_BACKOFF_MAX_S, DEFAULT_RETRY_BACKOFF_S, Task

__all__ = ["describe_task", "task_catalog"]

_log = logging.getLogger("neutrino.schema")

TaskEntry = dict[str, Any]
_EMPTY = inspect.Parameter.empty


def task_catalog(tasks: Mapping[str, Task[..., Any]]) -> dict[str, TaskEntry]:
    """One entry per task, in registration order (see the module docstring for its shape)."""
    return {name: describe_task(task) for name, task in tasks.items()}


def describe_task(task: Task[..., Any]) -> TaskEntry:
    """The catalog entry of one task. Never raises for a type it cannot describe: that part is `{}`."""
    hints = _type_hints(task.fn, task.signature)
    params = task.signature.parameters.values()
    positional_only = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    return {
        "params": _params_schema(task.name, task.signature, hints),
        "result": _result_schema(hints.get("return", _EMPTY)),
        "doc": _first_paragraph(task.fn),
        "options": _options(task),
        "http": not any(p.default is _EMPTY for p in positional_only),
        "positional_only": [p.name for p in positional_only],
    }


def _type_hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """Annotations with strings resolved (`from __future__ import annotations`) in the function's
    globals; one that does not resolve is left out, so it describes as "anything"."""
    raw = {name: p.annotation for name, p in signature.parameters.items() if p.annotation is not _EMPTY}
    if signature.return_annotation is not _EMPTY:
        raw["return"] = signature.return_annotation
    if not any(isinstance(v, str) for v in raw.values()):
        return raw
    globalns = getattr(inspect.unwrap(fn), "__globals__", {})
    resolved = {}
    for name, value in raw.items():
        try:
            # One at a time: get_type_hints(fn) fails whole when a single name is undefined.
            resolved[name] = typing.get_type_hints(_Annotated({name: value}), globalns, include_extras=True)[name]
        except Exception:
            continue
    return resolved


class _Annotated:
    """A stand-in carrying one annotation, for typing.get_type_hints."""

    def __init__(self, annotations: dict[str, Any]) -> None:
        self.__annotations__ = annotations


def _params_schema(name: str, signature: inspect.Signature, hints: Mapping[str, Any]) -> dict[str, Any]:
    from pydantic import ConfigDict, Field, create_model

    fields: dict[str, Any] = {}
    extra: Literal["allow", "forbid"] = "forbid"
    for i, param in enumerate(signature.parameters.values()):
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
        if param.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            continue
        annotation = hints.get(param.name, Any)
        if not _describable(annotation):
            _log.warning(
                "task %s: pydantic cannot describe the type of parameter %r (%r); the HTTP gateway will accept "
                "any value for it (on Python < 3.12, a TypedDict must come from typing_extensions)",
                name,
                param.name,
                annotation,
            )
            annotation = Any
        default = ... if param.default is _EMPTY else param.default
        # Fields named by position, the parameter name as the alias: a parameter may be called
        # `model_config`, `json` or `_x`, which pydantic will not take as a field name.
        fields[f"p{i}"] = (annotation, Field(default, alias=param.name))
    config = ConfigDict(title=name, extra=extra, arbitrary_types_allowed=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a default that is not JSON is left out of the schema, quietly
        try:
            model = create_model("Params", __config__=config, **fields)
            schema: dict[str, Any] = model.model_json_schema(mode="validation")
            return schema
        except Exception:
            # Should not happen once each annotation passed _describable; stay usable if it does.
            return _fallback_params(name, signature, extra)


def _fallback_params(name: str, signature: inspect.Signature, extra: str) -> dict[str, Any]:
    named = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    schema: dict[str, Any] = {
        "additionalProperties": extra == "allow",
        "properties": {p.name: {} for p in named},
        "title": name,
        "type": "object",
    }
    required = [p.name for p in named if p.default is _EMPTY]
    if required:
        schema["required"] = required
    return schema


def _describable(annotation: Any) -> bool:
    """Whether pydantic makes a JSON Schema for this type (arbitrary classes, unresolved names: no)."""
    from pydantic import TypeAdapter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TypeAdapter(annotation).json_schema(mode="validation")
    except Exception:
        return False
    return True


def _result_schema(annotation: Any) -> dict[str, Any]:
    if annotation is _EMPTY:
        return {}
    from pydantic import TypeAdapter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TypeAdapter(annotation).json_schema(mode="serialization")
    except Exception:
        return {}


def _first_paragraph(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn)
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


def _options(task: Task[..., Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if task.timeout is not None:
        options["timeout_s"] = task.timeout
    if task.retries:
        options["retries"] = task.retries
    if task.retry_on:
        options["retry_on"] = [cls.__qualname__ for cls in task.retry_on]
    if task.retry_backoff_s != DEFAULT_RETRY_BACKOFF_S:
        options["retry_backoff_s"] = task.retry_backoff_s
    if task.retry_backoff_max_s != DEFAULT_RETRY_BACKOFF_MAX_S:
        options["retry_backoff_max_s"] = task.retry_backoff_max_s
    return options
