"""The /docs page: one self-contained HTML page (inline style, no script, nothing fetched from anywhere)
listing every task with its parameters' JSON Schema and a curl line that works when pasted, the run
and model routes, and a link to /openapi.json.

Example arguments are made from each task's schema (its `examples`, `default`, `const` or `enum`
first, else the simplest value of the type that meets its bounds) and checked against that schema;
a task whose example does not pass says so next to its curl line instead of promising it works.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from .catalog import Catalog, TaskInfo

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd}h3{margin:1.6rem 0 .3rem}
code,pre{font:13px/1.45 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f5f5f5;padding:.6rem .8rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse}td,th{text-align:left;padding:.2rem .8rem .2rem 0;vertical-align:top}
.doc{white-space:pre-wrap}.note{color:#8a4b00}summary{cursor:pointer}
"""
# The page's Content-Security-Policy: nothing loads from anywhere, only this exact style block applies.
CSP = (
    f"default-src 'none'; style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_MAX_DEPTH = 8
_MAX_EXAMPLE_ELEMENTS = 1024  # a model input larger than this makes a curl line nobody reads; none is shown


@dataclass(frozen=True, slots=True)
class ModelDoc:
    """A model the gateway knows by name, and its V2 metadata from a replica (None when none answered)."""

    name: str
    metadata: Mapping[str, Any] | None


def render(
    *,
    base_url: str,
    catalog: Catalog,
    auth: bool,
    models: Sequence[ModelDoc],
    model_url_template: str | None,
) -> str:
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>Neutrino gateway</title><style>{_STYLE}</style></head><body>",
        "<h1>Neutrino gateway</h1>",
        f"<p>Base URL <code>{escape(base_url)}</code>. The whole API as OpenAPI 3.1: "
        '<a href="/openapi.json">/openapi.json</a>. Tasks as JSON: <code>GET /v1/tasks</code>.</p>',
    ]
    if auth:
        parts.append(
            "<p>Every call needs the gateway's bearer token. Set it once in your shell, and the lines below work "
            "as written:</p><pre><code>export TOKEN=...   # one of the gateway's --auth-token values</code></pre>"
        )
    parts.append(
        "<p>Bodies are JSON objects of named arguments (<code>curl -d</code> works: the gateway reads a JSON "
        "body whatever form type curl labels it with), or msgpack with <code>Content-Type: application/msgpack"
        "</code>. <code>?wait=S</code> waits up to S seconds for the result, else answers 202 with the run; "
        "<code>?wait=0</code> answers 202 at once.</p>"
    )
    parts.append("<h2 id=tasks>Tasks</h2>")
    if not catalog.known:
        parts.append("<p class=note>No task pod has answered yet, so the task list is not known; reload shortly.</p>")
    elif not catalog.tasks:
        parts.append("<p>The app has no tasks.</p>")
    for name in sorted(catalog.tasks):
        parts.append(_task(catalog.tasks[name], base_url, auth))
    parts.append(_runs(base_url, auth))
    parts.append(_models(models, model_url_template, base_url, auth))
    parts.append("</body></html>")
    return "\n".join(parts)


def curl(url: str, body: Any = None, *, auth: bool) -> str:
    """A curl command line for a POST of `body` as JSON (a GET when None), quoted for a POSIX shell."""
    words = ["curl"]
    if auth:
        words += ["-H", '"Authorization: Bearer $TOKEN"']  # double quotes: the shell fills in $TOKEN
    if body is not None:
        words += ["-d", shlex.quote(json.dumps(body, separators=(", ", ": ")))]
    words.append(shlex.quote(url))
    return " ".join(words)


def example(schema: Any, root: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A value that fits JSON Schema `schema` (as nearly as a few rules can tell), for an example call."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return None
    root = schema if root is None else root
    if isinstance(ref := schema.get("$ref"), str):
        return example(_resolve(ref, root), root, depth + 1)
    for key in ("examples", "enum"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    for key in ("default", "const", "example"):
        if key in schema:
            return schema[key]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            useful = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
            return example((useful or options)[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = [key for key in schema.get("required", []) if isinstance(key, str)]
        return {key: example(properties.get(key, {}), root, depth + 1) for key in required}
    if kind == "array":
        item = example(schema.get("items", {}), root, depth + 1)
        count = max(_int(schema.get("minItems"), 1), 1)
        return [item] * min(count, _int(schema.get("maxItems"), count))
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind)
    if kind == "boolean":
        return True
    return None


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node


def _string(schema: Mapping[str, Any]) -> str:
    by_format = {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00", "email": "a@b.example"}
    if (fmt := schema.get("format")) in by_format:
        return by_format[fmt]
    if fmt == "binary":
        return ""
    text = "text"
    text = text.ljust(_int(schema.get("minLength"), 0), "x")
    return text[: _int(schema.get("maxLength"), len(text))]


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10_000 else default


def _number(schema: Mapping[str, Any], kind: str) -> int | float:
    value: float = 1
    if isinstance(low := schema.get("minimum"), (int, float)):
        value = max(value, low)
    if isinstance(low := schema.get("exclusiveMinimum"), (int, float)):
        value = max(value, low + 1)
    if isinstance(high := schema.get("maximum"), (int, float)) and value > high:
        value = high
    if isinstance(high := schema.get("exclusiveMaximum"), (int, float)) and value >= high:
        value = high - 1
    if isinstance(step := schema.get("multipleOf"), (int, float)) and step > 0:
        value = step * max(1, round(value / step))
    return int(value) if kind == "integer" and float(value).is_integer() else value


def _pre(text: str) -> str:
    return f"<pre><code>{escape(text, quote=False)}</code></pre>"


def _schema(title: str, schema: Any) -> str:
    return f"<details><summary>{escape(title)}</summary>{_pre(_pretty(schema))}</details>"


def _pretty(value: Any, depth: int = 0) -> str:
    """JSON indented like `json.dumps(indent=2)`, except that a list of plain values stays on one line."""
    pad, end = "  " * (depth + 1), "  " * depth
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(key)}: {_pretty(item, depth + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{end}}}"
    if isinstance(value, list) and any(isinstance(item, (dict, list)) and item for item in value):
        return "[\n" + ",\n".join(pad + _pretty(item, depth + 1) for item in value) + f"\n{end}]"
    return json.dumps(value)


def _task(info: TaskInfo, base_url: str, auth: bool) -> str:
    args = example(info.params)
    if not isinstance(args, dict):
        args = {}
    problems = info.errors(args)
    line = curl(f"{base_url}/v1/tasks/{info.name}", args, auth=auth)
    out = [f"<section id=task-{escape(_anchor(info.name))}><h3><code>POST /v1/tasks/{escape(info.name)}</code></h3>"]
    if info.doc:
        out.append(f"<p class=doc>{escape(info.doc.strip())}</p>")
    out.append(_pre(line))
    if problems:
        first = problems[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "the body"
        out.append(f"<p class=note>Edit the example arguments first: {escape(where)}: {escape(first['msg'])}</p>")
    options = {k: v for k, v in info.options.items() if v is not None}
    if options:
        text = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
        out.append(
            f"<p>Defaults: <code>{escape(text)}</code> (override with <code>?timeout=S</code>, <code>?retries=N"
            "</code>)</p>"
        )
    out.append(_schema("Parameters (JSON Schema)", info.params))
    out.append(_schema("Result (JSON Schema)", info.result))
    out.append("</section>")
    return "".join(out)


def _runs(base_url: str, auth: bool) -> str:
    rows = [
        ("GET /v1/runs/{id}?wait=S", "a run's status, and its result or error once finished; waits up to S seconds"),
        ("POST /v1/runs/{id}/cancel", "cancel a run: dropped if queued, interrupted if running"),
        ("DELETE /v1/runs/{id}", "remove a finished run's record (409 while it runs: cancel it first)"),
        ("GET /v1/tasks", "the tasks with their schemas, as JSON"),
    ]
    table = "".join(f"<tr><td><code>{escape(r)}</code></td><td>{escape(w)}</td></tr>" for r, w in rows)
    poll = curl(f"{base_url}/v1/runs/RUN_ID?wait=30", auth=auth)
    return f"<h2 id=runs>Runs</h2><table>{table}</table><p>With the <code>id</code> of a 202 answer:</p>{_pre(poll)}"


def _models(models: Sequence[ModelDoc], template: str | None, base_url: str, auth: bool) -> str:
    rows = [
        ("POST /v1/models/{name}/predict", 'one input: {"inputs": x} -> {"outputs": y}, JSON or msgpack'),
        ("GET /v2/models/{name}", "the model's metadata (Open Inference Protocol)"),
        ("GET /v2/models/{name}/ready", "200 when a replica is ready"),
        ("POST /v2/models/{name}/infer", "a batch of rows as V2 tensors, as JSON or binary (tritonclient's default)"),
        ("/v2/models/{name}/versions/{version}/...", "the same three, for one version"),
        ("GET /v2/health/live, /v2/health/ready", "the gateway's own; ready when each --model has a ready replica"),
    ]
    table = "".join(f"<tr><td><code>{escape(r)}</code></td><td>{escape(w)}</td></tr>" for r, w in rows)
    out = [
        "<h2 id=models>Models</h2>",
        "<p>The gateway passes these calls to the named model's replicas, in turn, and their answers back.</p>",
        f"<table>{table}</table>",
    ]
    if template:
        out.append(f"<p>A model not listed below is looked for at <code>{escape(template)}</code>.</p>")
    if not models and not template:
        out.append("<p>No model is configured (<code>--model NAME=URL</code>).</p>")
    for model in models:
        out.append(_model(model, base_url, auth))
    return "".join(out)


def _model(model: ModelDoc, base_url: str, auth: bool) -> str:
    url = f"{base_url}/v2/models/{model.name}"
    out = [f"<section id=model-{escape(_anchor(model.name))}><h3>{escape(model.name)}</h3>"]
    lines = [curl(url, auth=auth), curl(f"{url}/ready", auth=auth)]
    meta = model.metadata
    if meta is None:
        out.append("<p class=note>No replica answered just now; its inputs are not known.</p>")
    else:
        tensors = [t for t in meta.get("inputs", []) if isinstance(t, Mapping) and isinstance(t.get("name"), str)]
        one = meta["example"] if "example" in meta else _row_example(tensors)
        if one is not None:
            lines.append(curl(f"{base_url}/v1/models/{model.name}/predict", {"inputs": one}, auth=auth))
        if (infer := _infer_example(tensors)) is not None:
            lines.append(curl(f"{url}/infer", infer, auth=auth))
        if one is not None and "example" not in meta:
            out.append(
                "<p class=note>The example input is zeros of the declared shape; the model may want other values.</p>"
            )
        out.append(_schema("Metadata", meta))
    out.insert(1, _pre("\n".join(lines)))
    out.append("</section>")
    return "".join(out)


def _row_shape(tensor: Mapping[str, Any]) -> list[int]:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in tensor.get("shape", [-1])]
    return shape[1:]  # the first dimension is the batch


def _zero(datatype: Any) -> Any:
    return {"BYTES": "", "BOOL": False}.get(str(datatype), 0)


def _fill(shape: list[int], value: Any) -> Any:
    return value if not shape else [_fill(shape[1:], value) for _ in range(shape[0])]


def _row_example(tensors: list[Mapping[str, Any]]) -> Any:
    """One input for predict: a row of each declared tensor (a {name: row} dict when there are several)."""
    if not tensors or sum(_size(_row_shape(t)) for t in tensors) > _MAX_EXAMPLE_ELEMENTS:
        return None
    rows = {t["name"]: _fill(_row_shape(t), _zero(t.get("datatype"))) for t in tensors}
    return next(iter(rows.values())) if len(rows) == 1 else rows


def _infer_example(tensors: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A V2 infer request of one row, zeros in every declared input tensor."""
    if not tensors or sum(_size(_row_shape(t)) for t in tensors) > _MAX_EXAMPLE_ELEMENTS:
        return None
    inputs = []
    for tensor in tensors:
        shape, datatype = [1, *_row_shape(tensor)], str(tensor.get("datatype", "FP32"))
        inputs.append(
            {"name": tensor["name"], "shape": shape, "datatype": datatype, "data": [_zero(datatype)] * _size(shape)}
        )
    return {"inputs": inputs}


def _size(shape: list[int]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size


def _anchor(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)
