"""The /docs page's parts without a server: example arguments made from JSON Schemas, curl lines a shell
reads back exactly, and a page that escapes what the task pods sent."""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

import pytest
from neutrino_gateway.catalog import Catalog
from neutrino_gateway.docs import ModelDoc, curl, example, render

POINT = {
    "$defs": {
        "Point": {
            "type": "object",
            "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x", "y"],
        }
    },
    "type": "object",
    "properties": {
        "point": {"$ref": "#/$defs/Point"},
        "label": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 6, "maxLength": 8}]},
        "mode": {"enum": ["upper", "lower"]},
        "count": {"type": "integer", "exclusiveMinimum": 4, "multipleOf": 5},
        "ratio": {"type": "number", "maximum": 0.5},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "when": {"type": "string", "format": "date-time"},
        "blob": {"type": "string", "format": "binary"},
        "image": {"type": "array", "items": {"type": "number"}, "examples": [[1, 2, 3]]},
        "optional": {"type": "integer", "default": 3},
    },
    "required": ["point", "label", "mode", "count", "ratio", "tags", "when", "blob", "image"],
    "additionalProperties": False,
}


def catalog(params: dict[str, Any], doc: str = "") -> Catalog:
    c = Catalog()
    c.update("tcp://pod:1", {"t": {"params": params, "result": {"type": "integer"}, "doc": doc}})
    return c


def test_examples_fit_their_schema() -> None:
    args = example(POINT)
    assert args == {
        "point": {"x": 1, "y": 1},
        "label": "textxx",
        "mode": "upper",
        "count": 5,
        "ratio": 0.5,
        "tags": ["text", "text"],
        "when": "2024-01-01T00:00:00Z",
        "blob": "",
        "image": [1, 2, 3],
    }
    assert catalog(POINT).tasks["t"].errors(args) == []


@pytest.mark.parametrize(
    "body",
    [{"text": 'it\'s "quoted" $HOME `date` \\n'}, {"x": 1}, {}, {"unicode": "héllo ✓"}],
)
def test_curl_lines_hand_the_shell_the_exact_body(body: dict[str, Any]) -> None:
    line = curl("http://127.0.0.1:8000/v1/tasks/t?wait=0", body, auth=True)
    words = shlex.split(line)
    assert words[:3] == ["curl", "-H", "Authorization: Bearer $TOKEN"]
    assert json.loads(words[4]) == body and words[5] == "http://127.0.0.1:8000/v1/tasks/t?wait=0"
    # And bash agrees: it passes the body through untouched, and fills in $TOKEN.
    shown = subprocess.run(
        ["bash", "-c", line.replace("curl", "printf '%s\\n'", 1)],
        capture_output=True,
        text=True,
        env={"TOKEN": "t0k"},
        check=True,
    ).stdout.splitlines()
    assert shown[1] == "Authorization: Bearer t0k" and json.loads(shown[3]) == body


def test_the_page_escapes_what_task_pods_send_and_says_when_an_example_will_not_do() -> None:
    params = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "required": ["code"],
    }
    page = render(
        base_url="http://gw:8000",
        catalog=catalog(params, doc="<script>alert(1)</script>"),
        auth=False,
        models=[ModelDoc("digits", None)],
        model_url_template=None,
    )
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Edit the example arguments first: code:" in page
    assert "Authorization" not in page  # --no-auth: the lines carry no token
    assert "curl http://gw:8000/v2/models/digits/ready" in page
    assert "No replica answered just now" in page
