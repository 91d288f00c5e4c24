"""Model calls through the gateway (models.py): real gateway processes in front of real model-server
replicas on loopback. Round robin, pass-through of bodies and statuses, replicas that refuse or are
still loading, no replica at all, unknown models, URL templates, auth, metrics, a replica killed
under load."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import ECHO_APP, HERE, ROOT, dead_url
from neutrino_model_server.testing import ServerProcess, model_replicas, start_model_server
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_harness import Gateway, Response

pytestmark = pytest.mark.timeout(120)
NO_TEMPLATE = {"NEUTRINO_MODEL_URL_TEMPLATE": ""}  # whatever the shell running the tests has set
MODEL_PATHS = ("/v1/models/", "/v2/")


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[ServerProcess]]:
    with model_replicas(ECHO_APP, "echo", 2, app_dir=HERE, cwd=ROOT) as servers:
        yield servers


@pytest.fixture
def loading(tmp_path: Path) -> Iterator[ServerProcess]:
    """A replica of `echo` that listens but stays loading (503 on predict, 400 on ready) until the test ends."""
    server = start_model_server(ECHO_APP, "echo", app_dir=HERE, cwd=ROOT, env={"ECHO_LOAD_GATE": str(tmp_path / "g")})
    server.wait_listening()
    yield server
    server.kill()


def models_flag(*urls: str) -> list[str]:
    return ["--model", f"echo={','.join(urls)}"]


def error_message(reply: Response) -> str:
    """The message of the gateway's own error: `{"error": {"type", "message", ...}}`, or under /v2 the
    protocol's `{"error": "<message>"}` (what V2 clients such as tritonclient read)."""
    error = reply.json["error"]
    return error if isinstance(error, str) else str(error["message"])


def counted(gw: Gateway, metric: str, **labels: str) -> float:
    """The value of one sample on the gateway's /metrics, found by its labels (in any order)."""
    page = gw.request("GET", "/metrics", auth=False).body.decode()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == metric and sample.labels == labels:
                return float(sample.value)
    return 0.0


def predict(gw: Gateway, x: object) -> tuple[int, object]:
    reply = gw.request("POST", "/v1/models/echo/predict", {"inputs": x})
    return reply.status, reply.data


def test_predict_goes_round_robin_over_the_replicas(
    replicas: list[ServerProcess], gateways: Callable[..., Gateway]
) -> None:
    gw = gateways(*models_flag(*(r.url for r in replicas)))
    pids = []
    for i in range(6):
        status, body = predict(gw, i)
        assert status == 200 and isinstance(body, dict) and body["outputs"]["x"] == i, body
        pids.append(body["outputs"]["pid"])
    assert set(pids) == {r.proc.pid for r in replicas}
    assert all(a != b for a, b in itertools.pairwise(pids)), pids  # each call the next replica
    assert counted(gw, "neutrino_gateway_model_requests_total", model="echo", route="predict", code="200") == 6
    assert counted(gw, "neutrino_gateway_requests_total", route="/v1/models/{name}/predict", code="200") == 6


def test_bodies_content_types_and_statuses_pass_through(
    replicas: list[ServerProcess], gateways: Callable[..., Gateway]
) -> None:
    gw = gateways(*models_flag(replicas[0].url))
    reply = gw.request("POST", "/v1/models/echo/predict", {"inputs": b"\x00\xff"}, content_type="application/msgpack")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/msgpack")
    assert reply.msgpack["outputs"]["x"] == b"\x00\xff"
    # curl -d: JSON under the form type; the model server reads the body as JSON all the same.
    reply = gw.request(
        "POST", "/v1/models/echo/predict", raw=b'{"inputs": 7}', content_type="application/x-www-form-urlencoded"
    )
    assert reply.status == 200 and reply.json["outputs"]["x"] == 7, reply.body
    # The replica's own refusal, in its own shape.
    reply = gw.request("POST", "/v1/models/echo/predict", {"nope": 1})
    assert reply.status == 400 and reply.json["error"]["type"] == "bad_request", reply.body
    assert "inputs" in reply.json["error"]["message"]


def test_v2_routes_pass_through(replicas: list[ServerProcess], gateways: Callable[..., Gateway]) -> None:
    gw = gateways(*models_flag(*(r.url for r in replicas)))
    meta = gw.request("GET", "/v2/models/echo").json
    assert meta["name"] == "echo" and meta["inputs"][0]["name"] == "x"
    reply = gw.request("GET", "/v2/models/echo/ready")
    assert reply.status == 200 and reply.json == {"name": "echo", "ready": True}
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [4, 5]}]}
    reply = gw.request("POST", "/v2/models/echo/infer", body)
    assert reply.status == 200, reply.body
    outputs = {o["name"]: o for o in reply.json["outputs"]}
    assert outputs["x"]["data"] == [4, 5] and reply.json["model_name"] == "echo"
    reply = gw.request("POST", "/v2/models/echo/infer", {"inputs": []})
    assert reply.status == 400 and isinstance(reply.json["error"], str)  # the protocol's error shape
    # The versioned routes, as tritonclient calls them with a model_version.
    assert gw.request("GET", "/v2/models/echo/versions/1").json["name"] == "echo"
    assert gw.request("GET", "/v2/models/echo/versions/1/ready").json == {"name": "echo", "ready": True}
    reply = gw.request("POST", "/v2/models/echo/versions/1/infer", body)
    assert reply.status == 200 and {o["name"]: o for o in reply.json["outputs"]}["x"]["data"] == [4, 5], reply.body
    reply = gw.request("POST", "/v2/models/echo/versions/2/infer", body)
    assert reply.status == 404 and "version '1' only" in reply.json["error"], reply.body  # the replica's own


def test_v2_health_routes_are_the_gateways(
    replicas: list[ServerProcess], loading: ServerProcess, digits: ServerProcess, gateways: Callable[..., Gateway]
) -> None:
    gw = gateways(*models_flag(loading.url, replicas[0].url), "--model", f"digits={digits.url}")
    assert gw.request("GET", "/v2/health/live").json == {"live": True}
    reply = gw.request("GET", "/v2/health/ready")  # each named model has a ready replica
    assert reply.status == 200 and reply.json == {"ready": True, "models": {"digits": True, "echo": True}}
    gw = gateways(*models_flag(loading.url), "--model", f"digits={digits.url}")
    reply = gw.request("GET", "/v2/health/ready")
    assert reply.status == 400 and reply.json == {"ready": False, "models": {"digits": True, "echo": False}}
    reply = gateways(env=NO_TEMPLATE).request("GET", "/v2/health/ready")  # no model named: nothing to wait for
    assert reply.status == 200 and reply.json == {"ready": True, "models": {}}


def test_a_replica_that_refuses_connections_is_skipped(
    replicas: list[ServerProcess], gateways: Callable[..., Gateway]
) -> None:
    gw = gateways(*models_flag(dead_url(), replicas[0].url, dead_url()))
    for i in range(6):
        assert predict(gw, i) == (200, {"outputs": {"x": i, "pid": replicas[0].proc.pid}})
    assert gw.request("GET", "/v2/models/echo/ready").status == 200
    metrics = gw.request("GET", "/metrics", auth=False).body.decode()
    assert 'neutrino_gateway_model_replica_skips_total{model="echo",reason="unreachable"}' in metrics


def test_a_loading_replica_is_skipped_and_alone_answers_503(
    replicas: list[ServerProcess], loading: ServerProcess, gateways: Callable[..., Gateway]
) -> None:
    gw = gateways(*models_flag(loading.url, replicas[1].url))
    for i in range(4):
        assert predict(gw, i) == (200, {"outputs": {"x": i, "pid": replicas[1].proc.pid}})
        assert gw.request("GET", "/v2/models/echo/ready").status == 200  # some replica is ready
    alone = gateways(*models_flag(loading.url))
    reply = alone.request("POST", "/v1/models/echo/predict", {"inputs": 1})
    assert reply.status == 503 and reply.json["error"]["type"] == "unavailable", reply.body
    assert f"{loading.url}: HTTP 503" in reply.json["error"]["message"] and reply.headers["Retry-After"] == "1"
    reply = alone.request("GET", "/v2/models/echo/ready")
    assert reply.status == 400 and reply.json == {"name": "echo", "ready": False}  # the replica's "not ready"


def test_no_reachable_replica_is_a_503_naming_them(gateways: Callable[..., Gateway]) -> None:
    url = dead_url()
    gw = gateways(*models_flag(url))
    reply = gw.request("POST", "/v1/models/echo/predict", {"inputs": 1})
    assert reply.status == 503 and reply.json["error"]["type"] == "unavailable", reply.body
    assert url in error_message(reply) and reply.headers["Retry-After"] == "1"
    reply = gw.request("GET", "/v2/models/echo")
    assert reply.status == 503 and url in error_message(reply), reply.body


def test_an_unknown_model_is_a_404_naming_the_fix(
    replicas: list[ServerProcess], gateways: Callable[..., Gateway]
) -> None:
    gw = gateways(*models_flag(replicas[0].url), env=NO_TEMPLATE)
    reply = gw.request("POST", "/v1/models/other/predict", {"inputs": 1})
    assert reply.status == 404 and reply.json["error"]["type"] == "unknown_model"
    assert "--model other=http://HOST:PORT" in error_message(reply)
    reply = gw.request("GET", "/v2/models/other")
    assert reply.status == 404 and "--model other=http://HOST:PORT" in error_message(reply)
    for bad in ("a%20b", "..", "-x", "x" * 64, "%2e%2e%2fetc"):
        reply = gw.request("POST", f"/v1/models/{bad}/predict", {"inputs": 1})
        assert reply.status == 404 and reply.json["error"]["type"] in ("unknown_model", "not_found"), (bad, reply.body)
        reply = gw.request("GET", f"/v2/models/{bad}/ready")
        assert reply.status == 404 and isinstance(reply.json["error"], str), (bad, reply.body)
    for bad in ("a%20b", "-x", "x" * 64):
        reply = gw.request("GET", f"/v2/models/echo/versions/{bad}/ready")
        assert reply.status == 404 and "is not a model version" in error_message(reply), (bad, reply.body)
    # The replica's own 404: it serves another model than the one asked for (a template sends every name there).
    gw = gateways("--model-url-template", replicas[0].url, env=NO_TEMPLATE)
    reply = gw.request("GET", "/v2/models/other")
    assert reply.status == 404 and "serves model 'echo'" in reply.json["error"], reply.body


def test_url_templates_and_the_sdk_environment_find_replicas(
    replicas: list[ServerProcess], gateways: Callable[..., Gateway]
) -> None:
    # Only `neutrino serve`'s variable (no --model, no gateway template): every name goes there.
    gw = gateways(env={"NEUTRINO_MODEL_URL_TEMPLATE": replicas[0].url})
    assert gw.request("GET", "/v2/models/echo/ready").status == 200
    # The SDK's per-model variable wins over a template that leads nowhere.
    gw = gateways(
        "--model-url-template",
        "http://{service}.invalid:8080",
        env={"NEUTRINO_MODEL_ECHO_URL": replicas[1].url},
    )
    status, body = predict(gw, 3)
    assert status == 200 and body == {"outputs": {"x": 3, "pid": replicas[1].proc.pid}}
    reply = gw.request("GET", "/v2/models/digits")
    assert reply.status == 503 and "neutrino-model-digits.invalid" in error_message(reply), reply.body


def test_killing_a_replica_under_load_loses_no_call(gateways: Callable[..., Gateway]) -> None:
    with model_replicas(ECHO_APP, "echo", 2, app_dir=HERE, cwd=ROOT) as servers:
        gw = gateways(*models_flag(*(s.url for s in servers)))
        answers: list[tuple[int, object]] = []
        lock = threading.Lock()
        half = threading.Event()

        def client(offset: int) -> None:
            for i in range(offset, offset + 40):
                got = predict(gw, i)
                with lock:
                    answers.append(got)
                    if len(answers) >= 80:
                        half.set()

        threads = [threading.Thread(target=client, args=(n * 1000,)) for n in range(6)]
        for t in threads:
            t.start()
        half.wait(60)
        os.kill(servers[0].proc.pid, signal.SIGKILL)  # mid-stream, with keep-alive connections open to it
        for t in threads:
            t.join(60)
        assert len(answers) == 240
        assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
        late = [body["outputs"]["pid"] for _, body in answers[-40:]]  # type: ignore[index]
        assert set(late) == {servers[1].proc.pid}


def test_the_openapi_document_declares_the_model_routes(
    replicas: list[ServerProcess], gateways: Callable[..., Gateway]
) -> None:
    from openapi_spec_validator import validate

    gw = gateways(*models_flag(replicas[0].url))
    document = gw.request("GET", "/openapi.json").json
    validate(document)
    assert {
        ("/v1/models/{name}/predict", "post"),
        ("/v2/models/{name}", "get"),
        ("/v2/models/{name}/ready", "get"),
        ("/v2/models/{name}/infer", "post"),
    } <= {(path, method) for path, item in document["paths"].items() for method in item}


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_model_routes_answer_only_what_the_openapi_document_declares(
    replicas: list[ServerProcess], gateways: Callable[..., Gateway], mode: str
) -> None:
    """schemathesis requests from the document's model operations, half of them for the real model: every
    status and body the gateway or the replica answers is one the document declares, and none is a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    gw = gateways(*models_flag(replicas[0].url))
    auth = {"Authorization": f"Bearer {gw.token}"}
    api = schemathesis.openapi.from_url(f"http://127.0.0.1:{gw.port}/openapi.json", headers=auth)
    operations = [op for op in (result.ok() for result in api.get_all_operations()) if op.path.startswith(MODEL_PATHS)]
    assert len(operations) == 9  # predict; metadata, ready, infer, each also per version; the two health routes
    statuses: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            if sum(statuses.values()) % 2 and isinstance(case.path_parameters, dict):
                case.path_parameters["name"] = "echo"
            response = case.call(headers=auth, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
            case.validate_response(response, checks=(status_code_conformance, response_schema_conformance))

        try:
            check()
        except Unsatisfiable:
            assert mode == "negative", operation.label
    assert statuses.get(200 if mode == "positive" else 404, 0) > 0, statuses


@pytest.fixture
def hangs_up_on_reuse() -> Iterator[str]:
    """A replica stand-in that answers the first request on each connection and closes the connection
    when a second one arrives on it: what a replica closing an idle keep-alive connection looks like
    to the caller that picked that connection just then."""
    listener = socket.create_server(("127.0.0.1", 0))
    body = b'{"outputs": 1}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def serve(conn: socket.socket) -> None:
        with conn:
            if conn.recv(65536):
                conn.sendall(answer)
            conn.recv(65536)  # the next request on this connection: hang up without answering

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_kept_alive_connection_the_replica_closed_is_tried_again(
    hangs_up_on_reuse: str, gateways: Callable[..., Gateway]
) -> None:
    gw = gateways("--model", f"flaky={hangs_up_on_reuse}")
    for _ in range(4):  # one replica only: without the second try, every other call would be a 503
        reply = gw.request("POST", "/v1/models/flaky/predict", {"inputs": 1})  # aiohttp retries only GETs itself
        assert reply.status == 200 and reply.json == {"outputs": 1}, reply.body
