"""The gateway's OpenAPI document is its contract (issue 17): what /openapi.json declares is what the
gateway enforces, checked against a real gateway in front of a real task pod.

- Task parameters: the request body schema in the document, resolved as an OpenAPI reader resolves
  it (every `$ref` against the document), accepts exactly the bodies the gateway accepts.
- Headers and query parameters: each constraint the gateway enforces is declared (Idempotency-Key's
  length and characters, `wait`'s maximum from --max-wait), and each operation that can answer 422
  declares it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from gateway_support import HERE, free_port
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.conftest import Orchestrator, start_orchestrator
from tests.gateway_harness import Gateway, start_gateway

pytestmark = pytest.mark.timeout(120)

MAX_WAIT = 120.0
DOC = "urn:neutrino-gateway:openapi"  # the base URI the document's `#/...` references resolve against


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tcp = f"tcp://127.0.0.1:{free_port()}"
    pod: Orchestrator = start_orchestrator(
        "--frontend", tcp, "--app-dir", str(HERE), workers=1, app="gateway_contract_app:app"
    )
    gw = start_gateway([tcp], tmp_path_factory.mktemp("contract") / "runs.db", "--max-wait", str(MAX_WAIT))
    yield gw
    gw.stop()
    pod.stop()


@pytest.fixture(scope="module")
def document(gateway: Gateway) -> dict[str, Any]:
    reply = gateway.request("GET", "/openapi.json")
    assert reply.status == 200, reply.body
    document: dict[str, Any] = reply.json
    return document


def _validator(document: dict[str, Any], *where: str) -> Any:
    """A validator for the schema at `where` in the document, its `$ref`s resolved against the whole
    document (as OpenAPI 3.1 readers resolve them: a schema without its own `$id` has the document as
    its base)."""
    registry: Registry[Any] = Registry().with_resource(DOC, DRAFT202012.create_resource(document))
    pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in where)
    return jsonschema.Draft202012Validator({"$ref": f"{DOC}#/{pointer}"}, registry=registry)


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _pointer(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve in the document"
        node = node[part]
    return node


def test_every_reference_in_the_document_resolves_against_the_document(document: dict[str, Any]) -> None:
    refs = set(_refs(document))
    assert any("Item" in ref for ref in refs), "the task schemas' definitions are referenced"
    for ref in refs:
        assert ref.startswith("#/"), ref
        _pointer(document, ref)


BODIES: list[tuple[str, Any]] = [
    ("order", {"items": None}),
    ("order", {"items": [None]}),
    ("order", {"items": [{"name": "a", "qty": 1, "note": None}]}),
    ("order", {"items": [{"name": "", "qty": 1, "note": None}]}),
    ("order", {"items": [{"name": "a", "qty": 1}]}),
    ("order", {"items": [{"name": "a", "qty": None, "note": "x"}]}),
    ("order", {"items": [], "mode": "slow", "blob": None}),
    ("order", {"items": [], "mode": None}),
    ("order", {"items": [], "extra": 1}),
    ("order", {}),
    ("ship", {"to": None}),
    ("ship", {"to": {"city": "Oslo"}}),
    ("ship", {"to": {"city": "Oslo", "lines": None}}),
    ("ship", {"to": {"city": "Oslo"}, "items": None}),
    ("ship", {"to": {"city": "Oslo"}, "items": [{"name": "a", "qty": "1", "note": None}]}),
]


@pytest.mark.parametrize(("task", "body"), BODIES, ids=[f"{t}-{json.dumps(b)}" for t, b in BODIES])
def test_the_gateway_accepts_a_body_exactly_when_the_document_does(
    gateway: Gateway, document: dict[str, Any], task: str, body: Any
) -> None:
    where = ("paths", f"/v1/tasks/{task}", "post", "requestBody", "content", "application/json", "schema")
    valid = _validator(document, *where).is_valid(body)
    reply = gateway.request("POST", f"/v1/tasks/{task}?wait=10", body)
    if valid:
        assert reply.status == 200, (body, reply.status, reply.body)
    else:
        assert reply.status == 422 and reply.json["error"]["type"] == "validation_error", (body, reply.body)


def _parameter(document: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    found = [p for p in document["paths"][path][method].get("parameters", []) if p["name"] == name]
    assert len(found) == 1, (path, method, name)
    parameter: dict[str, Any] = found[0]
    return parameter


KEYS = [
    ("k", True),
    ("a" * 255, True),
    ("a" * 256, False),
    ("order 42/retry #1 ~!", True),
    ("x~", True),
    ("a b", True),
    ("naïve", False),
    ("tab\there", False),
    ("\x7f", False),
]


@pytest.mark.parametrize(("key", "accepted"), KEYS, ids=[repr(k[:20]) for k, _ in KEYS])
def test_idempotency_key_constraints_are_declared_as_enforced(
    gateway: Gateway, document: dict[str, Any], key: str, accepted: bool
) -> None:
    parameter = _parameter(document, "/v1/tasks/{name}".replace("{name}", "sleep"), "post", "Idempotency-Key")
    schema = parameter["schema"]
    assert schema["minLength"] == 1 and schema["maxLength"] == 255 and "pattern" in schema
    assert jsonschema.Draft202012Validator(schema).is_valid(key) is accepted, key
    raw = key.encode("latin-1", "replace")
    reply = gateway.request(
        "POST", "/v1/tasks/sleep?wait=10", {"seconds": 0}, headers={"Idempotency-Key": raw.decode("latin-1")}
    )
    # Refused: 422 from the gateway, or 400 from aiohttp's own HTTP parser (a control character).
    assert reply.status == 200 if accepted else reply.status in (400, 422), (key, reply.status, reply.body)


def _run_id(gateway: Gateway) -> str:
    reply = gateway.request("POST", "/v1/tasks/sleep?wait=10", {"seconds": 0})
    assert reply.status == 200, reply.body
    run_id: str = reply.json["id"]
    return run_id


@pytest.mark.parametrize("bad", ["301", "-1", "abc", str(MAX_WAIT + 0.5)])
def test_get_run_wait_out_of_range_is_a_declared_422(gateway: Gateway, document: dict[str, Any], bad: str) -> None:
    operation = document["paths"]["/v1/runs/{id}"]["get"]
    wait = _parameter(document, "/v1/runs/{id}", "get", "wait")["schema"]
    assert wait["maximum"] == MAX_WAIT and wait["minimum"] == 0, "the maximum is the gateway's --max-wait"
    reply = gateway.request("GET", f"/v1/runs/{_run_id(gateway)}?wait={quote(bad)}")
    assert reply.status == 422 and reply.json["error"]["detail"][0]["loc"] == ["query", "wait"]
    assert "422" in operation["responses"], "GET /v1/runs/{id} answers 422 for a bad wait: it must say so"


@pytest.mark.parametrize(
    ("query", "name"),
    [
        (f"wait={MAX_WAIT + 1}", "wait"),
        ("wait=-1", "wait"),
        ("wait=1_0", "wait"),  # Python's float() reads it (10.0); the document's number does not
        ("timeout=0", "timeout"),
        ("timeout=x", "timeout"),
        ("retries=101", "retries"),
        ("retries=-1", "retries"),
        ("retries=1.5", "retries"),
    ],
)
def test_every_enforced_query_constraint_on_a_task_is_declared(
    gateway: Gateway, document: dict[str, Any], query: str, name: str
) -> None:
    operation = document["paths"]["/v1/tasks/sleep"]["post"]
    schema = _parameter(document, "/v1/tasks/sleep", "post", name)["schema"]
    value = query.split("=", 1)[1]
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    assert not jsonschema.Draft202012Validator(schema).is_valid(parsed), (query, schema)
    reply = gateway.request("POST", f"/v1/tasks/sleep?{query}", {"seconds": 0})
    assert reply.status == 422 and reply.json["error"]["detail"][0]["loc"] == ["query", name], reply.body
    assert "422" in operation["responses"]


@pytest.mark.parametrize(
    "query", ["wait=0", f"wait={MAX_WAIT}", "timeout=0.001", "retries=0", "retries=100", "retries=2.0"]
)
def test_query_values_the_document_allows_are_accepted(gateway: Gateway, document: dict[str, Any], query: str) -> None:
    name, value = query.split("=", 1)
    schema = _parameter(document, "/v1/tasks/sleep", "post", name)["schema"]
    assert jsonschema.Draft202012Validator(schema).is_valid(json.loads(value)), (query, schema)
    reply = gateway.request("POST", f"/v1/tasks/sleep?{query}", {"seconds": 0})
    assert reply.status in (200, 202), (query, reply.body)


def test_every_operation_that_answers_422_declares_it(document: dict[str, Any]) -> None:
    """The gateway answers 422 for a query parameter or header out of its constraints: every operation
    that has a query or header parameter with a constraint declares the 422."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            checked = [
                p for p in operation.get("parameters", []) if p["in"] in ("query", "header") and len(p["schema"]) > 1
            ]
            if checked:
                assert "422" in operation["responses"], (method, path, [p["name"] for p in checked])


# -- runs: cancel is an action, DELETE removes the record (REST semantics) ------------------------


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway in front of an app whose `sleep` task really sleeps: runs that stay unfinished."""
    tcp = f"tcp://127.0.0.1:{free_port()}"
    pod: Orchestrator = start_orchestrator("--frontend", tcp, workers=1, app="tests.apps.gateway_app:app")
    gw = start_gateway([tcp], tmp_path_factory.mktemp("sleepy") / "runs.db")
    yield gw
    gw.stop()
    pod.stop()


def _running(gateway: Gateway) -> str:
    reply = gateway.request("POST", "/v1/tasks/sleep?wait=0", {"seconds": 30})
    assert reply.status == 202, reply.body
    run_id: str = reply.json["id"]
    return run_id


def test_cancel_is_a_post_action_that_answers_the_run_and_is_idempotent(sleepy: Gateway) -> None:
    run_id = _running(sleepy)
    first = sleepy.request("POST", f"/v1/runs/{run_id}/cancel")
    assert first.status in (200, 202) and first.json["id"] == run_id, first.body
    finished = sleepy.request("GET", f"/v1/runs/{run_id}?wait=10").json
    assert finished["status"] == "cancelled", finished
    again = sleepy.request("POST", f"/v1/runs/{run_id}/cancel")
    assert again.status == 200 and again.json["status"] == "cancelled", again.body
    assert sleepy.request("POST", "/v1/runs/no-such-run/cancel").status == 404


def test_delete_of_an_unfinished_run_is_a_declared_409_that_says_to_cancel_first(
    sleepy: Gateway, document: dict[str, Any]
) -> None:
    run_id = _running(sleepy)
    reply = sleepy.request("DELETE", f"/v1/runs/{run_id}")
    assert reply.status == 409, reply.body
    error = reply.json["error"]
    assert error["type"] == "run_not_finished" and f"/v1/runs/{run_id}/cancel" in error["message"], error
    assert sleepy.request("GET", f"/v1/runs/{run_id}").json["status"] in ("queued", "running")
    assert "409" in document["paths"]["/v1/runs/{id}"]["delete"]["responses"]
    sleepy.request("POST", f"/v1/runs/{run_id}/cancel")
    assert sleepy.request("GET", f"/v1/runs/{run_id}?wait=10").json["status"] == "cancelled"


def test_delete_removes_a_finished_run_then_it_is_gone(gateway: Gateway, document: dict[str, Any]) -> None:
    run_id = _run_id(gateway)
    reply = gateway.request("DELETE", f"/v1/runs/{run_id}")
    assert reply.status == 204 and reply.body == b"", (reply.status, reply.body)
    assert "204" in document["paths"]["/v1/runs/{id}"]["delete"]["responses"]
    gone = gateway.request("GET", f"/v1/runs/{run_id}")
    assert gone.status == 404 and gone.json["error"]["type"] == "unknown_run", gone.body
    assert gateway.request("DELETE", f"/v1/runs/{run_id}").status == 404
    assert gateway.request("POST", f"/v1/runs/{run_id}/cancel").status == 404


def test_cancel_is_declared_as_its_own_operation(document: dict[str, Any]) -> None:
    cancel = document["paths"]["/v1/runs/{id}/cancel"]["post"]
    assert {"200", "202", "404"} <= set(cancel["responses"])
    delete = document["paths"]["/v1/runs/{id}"]["delete"]
    assert delete["operationId"] == "delete_run" and cancel["operationId"] == "cancel_run"


@pytest.mark.parametrize(("path", "method"), [("/v1/runs/{id}", "get"), ("/v1/runs/{id}", "delete")])
def test_run_lookups_declare_no_body_or_size_errors(document: dict[str, Any], path: str, method: str) -> None:
    """No body is read on these: a 400 or 413 cannot happen, so the document does not promise one."""
    responses = document["paths"][path][method]["responses"]
    assert "400" not in responses and "413" not in responses, sorted(responses)


# -- integers: msgpack carries 64 bits, and the document says so ---------------------------------

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


@pytest.mark.parametrize(
    ("task", "body"),
    [
        ("order", {"items": [{"name": "a", "qty": 2**64, "note": None}]}),
        ("order", {"items": [{"name": "a", "qty": INT64_MIN - 1, "note": None}]}),
        ("ship", {"to": {"city": "Oslo", "extra": {"deep": [2**70]}}}),
        ("order", {"items": [], "extra": {"n": -(2**80)}}),
        ("order", {"items": [{"name": "a", "qty": UINT64_MAX, "note": None}]}),
        ("order", {"items": [{"name": "a", "qty": INT64_MIN, "note": None}]}),
        ("ship", {"to": {"city": "Oslo", "extra": {"deep": [UINT64_MAX, 1.5]}}}),
    ],
    ids=["qty-2^64", "qty-below-int64", "free-form-2^70", "free-form-top-level", "uint64-max", "int64-min", "big-ok"],
)
def test_integers_beyond_64_bits_are_refused_by_the_document_as_by_the_gateway(
    gateway: Gateway, document: dict[str, Any], task: str, body: Any
) -> None:
    """msgpack (the wire to the workers) carries integers from -2^63 to 2^64-1: the published schema
    bounds every integer it lets through, typed or inside a free-form object, and the gateway's 422
    is then the document's own verdict."""
    where = ("paths", f"/v1/tasks/{task}", "post", "requestBody", "content", "application/json", "schema")
    valid = _validator(document, *where).is_valid(body)
    reply = gateway.request("POST", f"/v1/tasks/{task}?wait=10", body)
    if valid:
        assert reply.status == 200, (body, reply.status, reply.body)
    else:
        assert reply.status == 422 and reply.json["error"]["type"] == "validation_error", (body, reply.body)
    fits = all(INT64_MIN <= n <= UINT64_MAX for n in _ints(body))
    assert valid is fits, (body, valid)


def test_a_wide_integer_where_the_schema_says_number_is_sent_as_the_float_it_is(
    gateway: Gateway, document: dict[str, Any]
) -> None:
    where = ("paths", "/v1/tasks/sleep", "post", "requestBody", "content", "application/json", "schema")
    body = {"seconds": 2**70}
    assert _validator(document, *where).is_valid(body), "a number is a number, however it is written"
    reply = gateway.request("POST", "/v1/tasks/sleep?wait=10", body)
    assert reply.status == 200 and reply.json["result"] == float(2**70), reply.body


def _ints(value: Any) -> Iterator[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _ints(item)
    elif isinstance(value, list):
        for item in value:
            yield from _ints(item)


# -- query numbers: finite, and the declared maximum is the enforced one ----------------------------


@pytest.mark.parametrize("bad", ["1e400", "-1e400", "1e309"])
def test_a_non_finite_number_is_refused_as_not_finite(gateway: Gateway, bad: str) -> None:
    reply = gateway.request("POST", f"/v1/tasks/sleep?timeout={bad}", {"seconds": 0})
    assert reply.status == 422, reply.body
    problem = reply.json["error"]["detail"][0]
    assert problem["loc"] == ["query", "timeout"] and "finite" in problem["msg"], problem
    reply = gateway.request("GET", f"/v1/runs/{_run_id(gateway)}?wait={bad}")
    assert reply.status == 422 and "finite" in reply.json["error"]["detail"][0]["msg"], reply.body


def test_the_timeout_maximum_is_declared_and_enforced(gateway: Gateway, document: dict[str, Any]) -> None:
    """The task pod holds an attempt at most a day (it clamps longer timeouts): the gateway refuses
    more, and the document says so, instead of a longer timeout silently becoming a day."""
    schema = _parameter(document, "/v1/tasks/sleep", "post", "timeout")["schema"]
    maximum = schema["maximum"]
    assert maximum == 86_400, schema
    assert gateway.request("POST", f"/v1/tasks/sleep?timeout={maximum}", {"seconds": 0}).status == 200
    reply = gateway.request("POST", f"/v1/tasks/sleep?timeout={maximum + 1}", {"seconds": 0})
    assert reply.status == 422 and reply.json["error"]["detail"][0]["loc"] == ["query", "timeout"], reply.body
