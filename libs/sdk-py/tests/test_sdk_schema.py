"""neutrino.schema: each task's catalog entry (JSON Schemas of parameters and result, doc, options)."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Annotated, Any, Optional

import msgpack
import pydantic
import pytest
from neutrino import App, Task
from neutrino.schema import describe_task


class Point(pydantic.BaseModel):
    x: float
    y: float = 0.0


class Opaque:
    """A class pydantic has no schema for."""


def entry(fn: Any, **options: Any) -> dict[str, Any]:
    app = App("schema-tests")
    app.add_task(fn, **options)
    (catalog,) = app.catalog().values()
    return catalog


def test_scalars_lists_and_the_title() -> None:
    def scale(n: int, label: str, values: list[int]) -> list[float]:
        return [n * v for v in values]

    e = entry(scale)
    assert e["params"] == {
        "additionalProperties": False,
        "properties": {
            "n": {"title": "N", "type": "integer"},
            "label": {"title": "Label", "type": "string"},
            "values": {"items": {"type": "integer"}, "title": "Values", "type": "array"},
        },
        "required": ["n", "label", "values"],
        "title": "scale",
        "type": "object",
    }
    assert e["result"] == {"items": {"type": "number"}, "type": "array"}
    assert (e["http"], e["positional_only"], e["options"], e["doc"]) == (True, [], {}, "")


def test_defaults_are_not_required_and_appear_in_the_schema() -> None:
    def resize(path: str, width: int = 640, tags: list[str] | None = None, marker: object = Opaque()) -> None:
        """Resize an image.

        Longer explanation that is not the summary."""

    e = entry(resize)
    props = e["params"]["properties"]
    assert e["params"]["required"] == ["path"]
    assert props["width"] == {"default": 640, "title": "Width", "type": "integer"}
    assert props["tags"]["default"] is None
    assert props["tags"]["anyOf"] == [{"items": {"type": "string"}, "type": "array"}, {"type": "null"}]
    assert "default" not in props["marker"], "a default that is not JSON is left out"
    assert e["result"] == {"type": "null"}
    assert e["doc"] == "Resize an image."


def test_optional_and_annotated_constraints() -> None:
    def pick(a: Optional[int], b: Annotated[int, pydantic.Field(ge=1, description="at least one")] = 1) -> str:  # noqa: UP045
        return ""

    props = entry(pick)["params"]["properties"]
    assert props["a"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "title": "A"}
    assert props["b"] == {"default": 1, "description": "at least one", "minimum": 1, "title": "B", "type": "integer"}


def test_pydantic_models_as_parameters_and_result() -> None:
    def move(p: Point, dx: float) -> Point:
        return Point(x=p.x + dx, y=p.y)

    e = entry(move)
    assert e["params"]["properties"]["p"] == {"$ref": "#/$defs/Point"}
    assert e["params"]["$defs"]["Point"]["required"] == ["x"]
    assert e["result"]["title"] == "Point"
    assert e["result"]["properties"]["y"] == {"default": 0.0, "title": "Y", "type": "number"}


def test_unannotated_parameters_and_results_accept_anything() -> None:
    def anything(a, b=3):  # type: ignore[no-untyped-def]
        return a

    e = entry(anything)
    assert e["params"]["properties"] == {"a": {"title": "A"}, "b": {"default": 3, "title": "B"}}
    assert e["params"]["required"] == ["a"]
    assert e["result"] == {}


def test_types_pydantic_cannot_describe_become_anything() -> None:
    def odd(lock: threading.Lock, thing: Opaque, n: int) -> Opaque:  # type: ignore[valid-type]
        return thing

    e = entry(odd)
    props = e["params"]["properties"]
    assert props["lock"] == {"title": "Lock"} and props["thing"] == {"title": "Thing"}
    assert props["n"] == {"title": "N", "type": "integer"}
    assert e["result"] == {}


def test_string_annotations_resolve_in_the_functions_module() -> None:
    # This module has `from __future__ import annotations`: every annotation here is a string.
    def late(p: Point, n: int = 2) -> list[Point]:
        return [p] * n

    def broken(p: NoSuchType, n: int) -> AlsoMissing:  # type: ignore[name-defined]  # noqa: F821
        return p

    e = entry(late)
    assert e["params"]["properties"]["p"] == {"$ref": "#/$defs/Point"}
    assert e["result"]["items"] == {"$ref": "#/$defs/Point"}
    e = entry(broken)
    assert e["params"]["properties"]["p"] == {"title": "P"}, "an unresolvable name describes as anything"
    assert e["params"]["properties"]["n"]["type"] == "integer"
    assert e["result"] == {}


def test_positional_only_and_variadic_parameters() -> None:
    def f(a: int, /, b: int, *args: int, c: str = "x", **kwargs: int) -> None: ...

    def g(a: int = 1, /, *, b: int) -> None: ...

    e = entry(f)
    assert list(e["params"]["properties"]) == ["b", "c"]
    assert e["params"]["required"] == ["b"]
    assert e["params"]["additionalProperties"] is True, "**kwargs takes other names"
    assert (e["http"], e["positional_only"]) == (False, ["a"])
    e = entry(g)
    assert e["params"]["additionalProperties"] is False
    assert (e["http"], e["positional_only"]) == (True, ["a"]), "a defaulted positional-only parameter is fine"


def test_parameter_names_pydantic_reserves() -> None:
    def reserved(model_config: int, json: str, _private: bool = False) -> None: ...

    props = entry(reserved)["params"]["properties"]
    assert list(props) == ["model_config", "json", "_private"]
    assert props["model_config"]["type"] == "integer"


def test_async_tasks_describe_the_awaited_result() -> None:
    async def greet(name: str) -> str:
        return name

    e = entry(greet)
    assert e["result"] == {"type": "string"}
    assert e["params"]["required"] == ["name"]


def test_options_that_differ_from_the_defaults() -> None:
    def flaky() -> None: ...

    e = entry(flaky, timeout=5, retries=2, retry_on=(ConnectionError,), retry_backoff_s=0.5)
    assert e["options"] == {"timeout_s": 5.0, "retries": 2, "retry_on": ["ConnectionError"], "retry_backoff_s": 0.5}


def test_catalog_covers_every_task_and_is_plain_data() -> None:
    app = App("demo")

    @app.task(name="renamed")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task()
    def echo(data: bytes = b"\x00") -> bytes:
        return data

    catalog = app.catalog()
    assert list(catalog) == ["renamed", "echo"]
    assert catalog["renamed"]["params"]["title"] == "renamed"
    assert msgpack.unpackb(msgpack.packb(catalog), raw=False) == catalog
    assert isinstance(add, Task)
    assert describe_task(app.tasks["echo"]) == catalog["echo"]


def test_importing_the_sdk_does_not_import_pydantic() -> None:
    code = "import sys, neutrino; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_function_without_a_signature_still_describes() -> None:
    e = entry(lambda *args, **kwargs: None, name="variadic")
    assert e["params"] == {"additionalProperties": True, "properties": {}, "title": "variadic", "type": "object"}
    assert e["http"] is True


@pytest.mark.parametrize("annotation", [int, "int"])
def test_annotation_forms(annotation: Any) -> None:
    def fn(n):  # type: ignore[no-untyped-def]
        return n

    fn.__annotations__ = {"n": annotation, "return": annotation}
    e = entry(fn)
    assert e["params"]["properties"]["n"]["type"] == "integer"
    assert e["result"] == {"type": "integer"}
