"""Argument checks against the parameter schemas the workers sent: FastAPI-shaped errors."""

from __future__ import annotations

from neutrino_gateway.catalog import Catalog

ADD = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}, "blob": {"type": "string", "format": "binary"}},
    "required": ["x", "y"],
    "additionalProperties": False,
}


def catalog() -> Catalog:
    c = Catalog()
    c.update(
        "tcp://pod:1", {"add": {"params": ADD, "result": {"type": "integer"}, "doc": "Add.", "options": {"retries": 2}}}
    )
    return c


def test_a_fitting_body_has_no_errors() -> None:
    assert catalog().get("add").errors({"x": 1, "y": 2, "blob": b"\x00"}) == []  # type: ignore[union-attr]


def test_errors_name_the_field_like_fastapi() -> None:
    errors = catalog().get("add").errors({"x": "one", "z": 1})  # type: ignore[union-attr]
    assert {"loc": ["body", "y"], "msg": "Field required", "type": "missing"} in errors
    assert any(e["loc"] == ["body", "x"] and e["type"] == "type" for e in errors)
    assert any(e["type"] == "extra_forbidden" for e in errors)


def test_catalog_versions_change_only_with_content() -> None:
    c = catalog()
    version = c.version
    c.update("tcp://pod:1", {"add": {"params": ADD, "result": {"type": "integer"}}})
    assert c.version == version
    c.update("tcp://pod:2", {"add": {"params": ADD, "result": {"type": "integer"}}})
    assert c.version == version + 1 and c.sources == {"tcp://pod:1", "tcp://pod:2"}


def test_a_bad_schema_is_not_checked_and_bad_entries_are_skipped() -> None:
    c = Catalog()
    c.update("p", {"odd": {"params": {"type": 12}}, 7: {}, "notamap": [1]})  # type: ignore[dict-item]
    assert c.get("odd") is not None and c.get("odd").errors({"anything": 1}) == []  # type: ignore[union-attr]
    assert c.get("notamap") is None
