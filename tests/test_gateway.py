"""The gateway end to end: a real gateway process in front of two real orchestrators (different TCP
ports) with real workers, a real SQLite file, HTTP over loopback.

Each test checks one promise of the HTTP API (services/gateway-py/README.md): answers and their
status codes, validation, idempotency, runs surviving a gateway restart, runs surviving the loss
of a task pod, auth.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Orchestrator, free_port, start_orchestrator, wait_until
from .gateway_harness import Gateway, start_gateway

APP = "tests.apps.gateway_app:app"
pytestmark = pytest.mark.timeout(120)


def task_pod(*args: str, workers: int = 2) -> tuple[Orchestrator, str]:
    tcp = f"tcp://127.0.0.1:{free_port()}"
    return start_orchestrator("--frontend", tcp, *args, workers=workers, app=APP), tcp


@pytest.fixture(scope="module")
def pods() -> Iterator[list[tuple[Orchestrator, str]]]:
    started = [task_pod(), task_pod()]
    yield started
    for orch, _ in started:
        orch.stop()


@pytest.fixture(scope="module")
def gateway(pods: list[tuple[Orchestrator, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway([tcp for _, tcp in pods], tmp_path_factory.mktemp("gw") / "runs.db")
    yield gw
    gw.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[Gateway]]:
    """For tests that start their own gateways: each is stopped by pid at teardown."""
    started: list[Gateway] = []
    yield started
    for gw in started:
        gw.stop()


@pytest.fixture
def own_pods() -> Iterator[list[Orchestrator]]:
    started: list[Orchestrator] = []
    yield started
    for orch in started:
        orch.stop()


# -- runs -------------------------------------------------------------------------------------


def test_sync_run_answers_the_result(gateway: Gateway) -> None:
    reply = gateway.request("POST", "/v1/tasks/add", {"x": 2, "y": 40})
    assert reply.status == 200, reply.body
    body = reply.json
    assert body["status"] == "succeeded" and body["result"] == 42 and len(body["id"]) == 32
    run = gateway.request("GET", f"/v1/runs/{body['id']}").json
    assert run["status"] == "succeeded" and run["result"] == 42 and run["attempts"] == 1 and run["task"] == "add"
    assert run["created_at"] <= run["started_at"] <= run["finished_at"]


def test_async_run_answers_202_with_a_location_to_poll(gateway: Gateway) -> None:
    reply = gateway.request("POST", "/v1/tasks/sleep?wait=0", {"seconds": 0.3})
    assert reply.status == 202, reply.body
    location = reply.headers["Location"]
    assert location == f"/v1/runs/{reply.json['id']}" and reply.json["status"] in ("queued", "running")
    done = gateway.request("GET", f"{location}?wait=10").json
    assert done["status"] == "succeeded" and done["result"] == 0.3


def test_prefer_respond_async_and_a_short_wait_answer_202(gateway: Gateway) -> None:
    reply = gateway.request("POST", "/v1/tasks/sleep", {"seconds": 0.2}, headers={"Prefer": "respond-async"})
    assert reply.status == 202
    reply = gateway.request("POST", "/v1/tasks/sleep?wait=0.05", {"seconds": 1.0})
    assert reply.status == 202 and reply.json["status"] == "running"


def test_msgpack_in_and_out_keeps_bytes(gateway: Gateway) -> None:
    blob = os.urandom(1000)
    reply = gateway.request("POST", "/v1/tasks/echo", {"data": blob}, content_type="application/msgpack")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/msgpack")
    assert reply.msgpack["result"] == blob
    # JSON answers carry bytes as base64 text.
    reply = gateway.request(
        "POST",
        "/v1/tasks/add",
        {"x": 1, "y": 2},
        headers={"Accept": "application/json"},
        content_type="application/msgpack",
    )
    assert reply.json["result"] == 3


def test_task_failure_is_a_500_with_the_remote_type_and_message(gateway: Gateway) -> None:
    reply = gateway.request("POST", "/v1/tasks/fail", {"message": "no such user"})
    assert reply.status == 500
    error = reply.json["error"]
    assert error["type"] == "ValueError" and error["message"] == "no such user"
    assert error["detail"]["kind"] == "task_error" and "traceback" not in error["detail"]
    run = gateway.request("GET", f"/v1/runs/{error['detail']['run_id']}").json
    assert run["status"] == "failed" and run["error"]["type"] == "ValueError"


def test_cancel_a_running_run(gateway: Gateway) -> None:
    run_id = gateway.request("POST", "/v1/tasks/sleep?wait=0", {"seconds": 30}).json["id"]
    wait_until(lambda: gateway.request("GET", f"/v1/runs/{run_id}").json["status"] == "running", 10, "run running")
    reply = gateway.request("POST", f"/v1/runs/{run_id}/cancel")
    assert reply.status == 200 and reply.json["status"] == "cancelled", reply.body
    assert gateway.request("GET", f"/v1/runs/{run_id}").json["status"] == "cancelled"


# -- validation and errors ------------------------------------------------------------------------


def test_validation_errors_are_422_with_field_locations(gateway: Gateway) -> None:
    reply = gateway.request("POST", "/v1/tasks/add", {"x": "two"})
    assert reply.status == 422
    error = reply.json["error"]
    assert error["type"] == "validation_error"
    locs = {tuple(item["loc"]) for item in error["detail"]}
    assert ("body", "x") in locs and ("body", "y") in locs, error["detail"]
    reply = gateway.request("POST", "/v1/tasks/norm", {"point": {"x": 1}})
    assert reply.status == 422 and ("body", "point", "y") in {tuple(i["loc"]) for i in reply.json["error"]["detail"]}
    reply = gateway.request("POST", "/v1/tasks/shout", {"word": "", "mode": "sideways"})
    assert reply.status == 422 and len(reply.json["error"]["detail"]) == 2
    reply = gateway.request("POST", "/v1/tasks/add", {"x": 1, "y": 2, "z": 3})
    assert reply.status == 422 and reply.json["error"]["detail"][0]["type"] == "extra_forbidden"
    assert gateway.request("POST", "/v1/tasks/norm", {"point": {"x": 3, "y": 4}, "scale": 2}).json["result"] == 10.0


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "kind"),
    [
        (b"{not json", "application/json", 400, "bad_request"),
        (b"[1, 2]", "application/json", 400, "bad_request"),
        (b"\xc1", "application/msgpack", 400, "bad_request"),
        (b"x=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_malformed_bodies(gateway: Gateway, raw: bytes, content_type: str, status: int, kind: str) -> None:
    reply = gateway.request("POST", "/v1/tasks/add", raw=raw, content_type=content_type)
    assert reply.status == status and reply.data["error"]["type"] == kind, reply.body


@pytest.mark.parametrize("query", ["wait=-1", "wait=nope", "timeout=0", "retries=101", "retries=1.5", "wait=99999"])
def test_bad_query_parameters_are_422(gateway: Gateway, query: str) -> None:
    reply = gateway.request("POST", f"/v1/tasks/add?{query}", {"x": 1, "y": 2})
    assert reply.status == 422 and reply.json["error"]["detail"][0]["loc"][0] == "query", reply.body


def test_unknown_task_run_and_route_are_404(gateway: Gateway) -> None:
    reply = gateway.request("POST", "/v1/tasks/nope", {})
    assert reply.status == 404 and reply.json["error"]["type"] == "unknown_task"
    reply = gateway.request("GET", "/v1/runs/0123456789abcdef")
    assert reply.status == 404 and reply.json["error"]["type"] == "unknown_run"
    reply = gateway.request("GET", "/v1/nothing")
    assert reply.status == 404 and reply.json["error"]["type"] == "not_found"
    # Under /v2 the gateway answers in the Open Inference Protocol's shape, which tritonclient reads.
    reply = gateway.request("GET", "/v2/nothing")
    assert reply.status == 404 and isinstance(reply.json["error"], str) and reply.json["error"]


def test_oversized_body_is_413(own_pods: list[Orchestrator], gateways: list[Gateway], tmp_path: Path) -> None:
    orch, tcp = task_pod(workers=1)
    own_pods.append(orch)
    gw = start_gateway([tcp], tmp_path / "runs.db", "--max-body-bytes", "1000")
    gateways.append(gw)
    reply = gw.request("POST", "/v1/tasks/echo", {"data": "x" * 2000})
    assert reply.status == 413 and reply.json["error"]["type"] == "payload_too_large"
    reply = gw.request("POST", "/v1/tasks/add", {"x": 1, "y": 1})
    assert reply.status == 200 and reply.json["result"] == 2, reply.body


def test_all_pods_busy_is_429_with_retry_after(
    own_pods: list[Orchestrator], gateways: list[Gateway], tmp_path: Path
) -> None:
    pods = [task_pod("--queue-limit", "1", "--window", "1", workers=1) for _ in range(2)]
    own_pods.extend(orch for orch, _ in pods)
    gw = start_gateway([tcp for _, tcp in pods], tmp_path / "runs.db")
    gateways.append(gw)
    statuses = []
    for _ in range(8):  # each pod: one running, one queued; then both refuse
        reply = gw.request("POST", "/v1/tasks/sleep?wait=0.5", {"seconds": 5})
        statuses.append(reply.status)
        if reply.status == 429:
            assert reply.headers["Retry-After"] == "1" and reply.json["error"]["type"] == "busy"
            break
    assert statuses[-1] == 429 and statuses.count(202) >= 4, statuses


def test_no_reachable_pod_is_503(gateways: list[Gateway], tmp_path: Path) -> None:
    gw = start_gateway([f"tcp://127.0.0.1:{free_port()}"], tmp_path / "runs.db", wait_ready=False)
    gateways.append(gw)
    assert gw.request("GET", "/readyz", auth=False).status == 503
    reply = gw.request("POST", "/v1/tasks/add", {"x": 1, "y": 2})
    assert reply.status == 503 and reply.json["error"]["type"] == "unavailable" and "Retry-After" in reply.headers
    assert gw.request("GET", "/healthz", auth=False).status == 200


# -- auth -------------------------------------------------------------------------------------------


def test_auth_is_enforced_except_on_probes_and_metrics(gateway: Gateway) -> None:
    for method, path in [
        ("POST", "/v1/tasks/add"),
        ("GET", "/v1/tasks"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/runs/x"),
    ]:
        reply = gateway.request(method, path, {"x": 1, "y": 2}, auth=False)
        assert reply.status == 401 and reply.json["error"]["type"] == "unauthorized", (method, path)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        reply = gateway.request(method, path, {"x": 1, "y": 2}, headers={"Authorization": "Bearer wrong"})
        assert reply.status == 401, (method, path)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert gateway.request("GET", path, auth=False).status == 200, path


def test_the_gateway_refuses_to_start_without_tokens_or_no_auth(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "neutrino_gateway",
            "--orchestrator",
            "tcp://127.0.0.1:1",
            "--db",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("NEUTRINO_GATEWAY_")},
    )
    assert done.returncode == 2 and "--no-auth" in done.stderr and "--auth-token" in done.stderr


# -- the registry and OpenAPI -------------------------------------------------------------------------


def test_tasks_are_listed_with_schemas_from_the_workers(gateway: Gateway) -> None:
    tasks = {task["name"]: task for task in gateway.request("GET", "/v1/tasks").json["tasks"]}
    assert {"add", "norm", "shout", "sleep", "fail", "echo"} <= set(tasks)
    add = tasks["add"]
    assert add["params"]["properties"]["x"]["type"] == "integer" and set(add["params"]["required"]) == {"x", "y"}
    assert add["result"]["type"] == "integer" and add["doc"] == "Add two integers."


def test_openapi_document_validates_and_has_one_operation_per_task(gateway: Gateway) -> None:
    from openapi_spec_validator import validate

    document = gateway.request("GET", "/openapi.json").json
    validate(document)
    operation = document["paths"]["/v1/tasks/add"]["post"]
    assert operation["operationId"] == "run_add"
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"x", "y"}
    assert {"/v1/runs/{id}", "/v1/tasks", "/healthz", "/readyz", "/metrics"} <= set(document["paths"])


def test_metrics_count_requests_and_runs(gateway: Gateway) -> None:
    gateway.request("POST", "/v1/tasks/add", {"x": 1, "y": 1})
    text = gateway.request("GET", "/metrics", auth=False).body.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert ("neutrino_gateway_requests_total", (("code", "200"), ("route", "/v1/tasks/{name}"))) in samples
    assert ("neutrino_gateway_runs_finished_total", (("outcome", "ok"), ("task", "add"))) in samples
    assert samples[("neutrino_gateway_task_pods", (("state", "up"),))] == 2
    assert sorted(v for (name, _), v in samples.items() if name == "neutrino_gateway_task_pod_up") == [1, 1]


# -- idempotency, restarts, lost pods -----------------------------------------------------------------


def test_idempotency_key_returns_the_same_run_and_runs_it_once(gateway: Gateway, tmp_path: Path) -> None:
    path, key = tmp_path / "ran.txt", uuid.uuid4().hex
    body = {"path": str(path), "token": "once"}
    first = gateway.request("POST", "/v1/tasks/record", body, headers={"Idempotency-Key": key})
    again = gateway.request("POST", "/v1/tasks/record", body, headers={"Idempotency-Key": key})
    assert first.status == again.status == 200 and first.json == again.json
    assert path.read_text() == "once\n"
    # In flight at the same time: the second request joins the first run.
    key = uuid.uuid4().hex
    slow = {"path": str(path), "token": "slow", "seconds": 0.5}
    a = gateway.request("POST", "/v1/tasks/record_then_sleep?wait=0", slow, headers={"Idempotency-Key": key})
    b = gateway.request("POST", "/v1/tasks/record_then_sleep", slow, headers={"Idempotency-Key": key})
    assert a.json["id"] == b.json["id"] and b.json["result"] == "slow"
    assert path.read_text().count("slow") == 1
    reply = gateway.request("POST", "/v1/tasks/add", {"x": 1, "y": 2}, headers={"Idempotency-Key": key})
    assert reply.status == 409 and reply.json["error"]["type"] == "idempotency_conflict"


def test_runs_survive_a_gateway_restart(
    pods: list[tuple[Orchestrator, str]], gateways: list[Gateway], tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    gw = start_gateway([tcp for _, tcp in pods], db)
    gateways.append(gw)
    done_id = gw.request("POST", "/v1/tasks/add", {"x": 20, "y": 22}).json["id"]
    marker = tmp_path / "ran.txt"
    body = {"path": str(marker), "token": "t", "seconds": 1.0}
    retried = gw.request("POST", "/v1/tasks/record_then_sleep?wait=0&retries=2", body).json["id"]
    not_retried = gw.request("POST", "/v1/tasks/record_then_sleep?wait=0&retries=0", body).json["id"]
    wait_until(lambda: marker.exists() and marker.read_text().count("t") == 2, 10, "both runs started")
    gw.kill()  # SIGKILL: no chance to write anything more
    gw2 = start_gateway([tcp for _, tcp in pods], db)
    gateways.append(gw2)
    assert gw2.request("GET", f"/v1/runs/{done_id}").json["result"] == 42
    run = gw2.request("GET", f"/v1/runs/{retried}?wait=20").json
    assert run["status"] == "succeeded" and run["attempts"] >= 2, run
    run = gw2.request("GET", f"/v1/runs/{not_retried}?wait=20").json
    assert run["status"] == "failed" and run["error"]["kind"] == "gateway_restarted", run
    assert "may or may not have run" in run["error"]["message"]


def test_killing_a_pod_under_load_loses_no_run(
    own_pods: list[Orchestrator], gateways: list[Gateway], tmp_path: Path
) -> None:
    pods = [task_pod(), task_pod()]
    own_pods.extend(orch for orch, _ in pods)
    gw = start_gateway([tcp for _, tcp in pods], tmp_path / "runs.db")
    gateways.append(gw)
    ids = []
    for i in range(120):
        retries = 2 if i % 2 else 0
        reply = gw.request("POST", f"/v1/tasks/sleep?wait=0&retries={retries}", {"seconds": 0.05})
        assert reply.status == 202, reply.body
        ids.append((reply.json["id"], retries))
    victim = pods[0][0]
    os.kill(victim.proc.pid, signal.SIGKILL)
    for pid in victim.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    outcomes = {}
    deadline = time.monotonic() + 60
    for run_id, retries in ids:
        run = gw.request("GET", f"/v1/runs/{run_id}?wait={max(0.1, deadline - time.monotonic())}").json
        outcomes[run_id] = run
        assert run["status"] in ("succeeded", "failed"), run
        if run["status"] == "failed":
            assert run["error"]["kind"] == "pod_lost" and retries == 0, run
            assert "stopped answering" in run["error"]["message"]
    assert sum(run["status"] == "succeeded" for run in outcomes.values()) >= 60  # every retryable one, at least
    # The survivor still serves.
    assert gw.request("POST", "/v1/tasks/add", {"x": 1, "y": 1}).json["result"] == 2


def test_msgpack_errors_are_msgpack(gateway: Gateway) -> None:
    reply = gateway.request("POST", "/v1/tasks/add", {"x": "no"}, content_type="application/msgpack")
    assert reply.status == 422 and reply.headers["Content-Type"].startswith("application/msgpack")
    assert msgpack.unpackb(reply.body)["error"]["type"] == "validation_error"


# -- neutrino.Client over HTTP -------------------------------------------------------------------


def test_client_with_an_http_address_calls_through_the_gateway(gateway: Gateway) -> None:
    from neutrino import AuthenticationError, BadArgumentsError, Client, TaskError, UnknownTaskError

    with Client(f"http://127.0.0.1:{gateway.port}", token=gateway.token) as client:
        assert client.call("add", 2, 3) == 5  # positional arguments are named from the task's parameters
        assert client.call("add", x=2, y=5) == 7
        assert client.call("echo", b"\x00\xff") == b"\x00\xff"
        futures = [client.submit("add", i, i) for i in range(200)]
        assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(200)]
        with pytest.raises(TaskError) as failed:
            client.call("fail", "kaput")
        assert failed.value.type == "ValueError" and failed.value.message == "kaput"
        with pytest.raises(BadArgumentsError):
            client.call("add", x="one", y=2)
        with pytest.raises(UnknownTaskError):
            client.call("nope")
        # Longer than one request's wait: the client follows the run until it ends.
        assert client.submit_with("sleep", kwargs={"seconds": 0.2}, retries=1).result(timeout=30) == 0.2
    with Client(f"http://127.0.0.1:{gateway.port}", token="wrong") as client, pytest.raises(AuthenticationError):
        client.call("add", 1, 2)


def test_client_timeout_over_http_leaves_the_run_going(gateway: Gateway) -> None:
    from neutrino import Client, NeutrinoTimeoutError

    with Client(f"http://127.0.0.1:{gateway.port}", token=gateway.token, timeout_s=0.3) as client:
        with pytest.raises(NeutrinoTimeoutError, match="goes on") as timed_out:
            client.call("sleep", 1.0)
        run_id = str(timed_out.value).split()[1]
    assert gateway.request("GET", f"/v1/runs/{run_id}?wait=10").json["status"] == "succeeded"


def test_client_cancel_over_http_cancels_and_leaves_the_run_readable(gateway: Gateway) -> None:
    """`Client.cancel(run_id)` over HTTP is POST /v1/runs/{id}/cancel: the run stops and stays
    readable (DELETE would remove the record, and refuses a run that has not finished)."""
    from neutrino import Client

    run_id = gateway.request("POST", "/v1/tasks/sleep?wait=0", {"seconds": 30}).json["id"]
    with Client(f"http://127.0.0.1:{gateway.port}", token=gateway.token) as client:
        client.cancel(run_id)
        client.cancel(run_id)  # again: nothing changes
    assert gateway.request("GET", f"/v1/runs/{run_id}?wait=10").json["status"] == "cancelled"


def test_a_restarted_pod_is_noticed_by_its_new_instance(
    own_pods: list[Orchestrator], gateways: list[Gateway], tmp_path: Path
) -> None:
    port = free_port()
    tcp = f"tcp://127.0.0.1:{port}"
    first = start_orchestrator("--frontend", tcp, workers=1, app=APP)
    own_pods.append(first)
    # A pod timeout far longer than the restart: only the new Pong.instance can tell.
    gw = start_gateway([tcp], tmp_path / "runs.db", "--pod-timeout", "60")
    gateways.append(gw)
    retried = gw.request("POST", "/v1/tasks/sleep?wait=0&retries=1", {"seconds": 0.5}).json["id"]
    lost = gw.request("POST", "/v1/tasks/sleep?wait=0&retries=0", {"seconds": 0.5}).json["id"]
    for pid in [first.proc.pid, *first.pids()]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    first.proc.wait()
    own_pods.append(start_orchestrator("--frontend", tcp, workers=1, app=APP))
    run = gw.request("GET", f"/v1/runs/{retried}?wait=30").json
    assert run["status"] == "succeeded" and run["attempts"] == 2, run
    run = gw.request("GET", f"/v1/runs/{lost}?wait=30").json
    assert run["status"] == "failed" and "restarted" in run["error"]["message"], run
    gw.wait_for("task pod .* restarted")


def test_a_dns_name_resolves_to_its_task_pods(
    own_pods: list[Orchestrator], gateways: list[Gateway], tmp_path: Path
) -> None:
    orch, tcp = task_pod(workers=1)
    own_pods.append(orch)
    port = tcp.rsplit(":", 1)[1]
    gw = start_gateway([f"tcp://localhost:{port}"], tmp_path / "runs.db", "--resolve-interval", "0.2")
    gateways.append(gw)
    gw.wait_for(rf"task pod tcp://127\.0\.0\.1:{port} added")
    assert gw.request("POST", "/v1/tasks/add", {"x": 1, "y": 2}).json["result"] == 3
    assert gw.request("GET", "/readyz", auth=False).json["task_pods"] == [f"tcp://127.0.0.1:{port}"]


def test_sigterm_stops_the_gateway_cleanly(pods: list[tuple[Orchestrator, str]], tmp_path: Path) -> None:
    gw = start_gateway([tcp for _, tcp in pods], tmp_path / "runs.db")
    assert gw.request("POST", "/v1/tasks/add", {"x": 1, "y": 1}).json["result"] == 2
    assert gw.stop() == 0
    assert "gateway stopped" in gw.log


def test_tracebacks_only_when_configured(
    pods: list[tuple[Orchestrator, str]], gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = start_gateway([tcp for _, tcp in pods], tmp_path / "runs.db", "--include-traceback")
    gateways.append(gw)
    reply = gw.request("POST", "/v1/tasks/fail", {"message": "deep"})
    assert reply.status == 500 and "raise ValueError(message)" in reply.json["error"]["detail"]["traceback"]
    run = gw.request("GET", f"/v1/runs/{reply.json['error']['detail']['run_id']}").json
    assert "Traceback" in run["error"]["traceback"]


def test_unfinished_runs_are_bounded(
    pods: list[tuple[Orchestrator, str]], gateways: list[Gateway], tmp_path: Path
) -> None:
    gw = start_gateway([tcp for _, tcp in pods], tmp_path / "runs.db", "--max-active-runs", "2")
    gateways.append(gw)
    held = [gw.request("POST", "/v1/tasks/sleep?wait=0", {"seconds": 1.0}) for _ in range(2)]
    assert [reply.status for reply in held] == [202, 202]
    reply = gw.request("POST", "/v1/tasks/add", {"x": 1, "y": 2})
    assert reply.status == 429 and reply.json["error"]["type"] == "busy" and reply.headers["Retry-After"] == "1"
    for first in held:
        assert gw.request("GET", f"/v1/runs/{first.json['id']}?wait=10").json["status"] == "succeeded"
    assert gw.request("POST", "/v1/tasks/add", {"x": 1, "y": 2}).json["result"] == 3  # room again


# -- review regressions ------------------------------------------------------------------------------


def test_a_run_answered_202_never_vanishes_on_a_later_refusal(
    own_pods: list[Orchestrator], gateways: list[Gateway], tmp_path: Path
) -> None:
    orch, tcp = task_pod("--queue-limit", "1", "--window", "1", workers=1)
    own_pods.append(orch)
    gw = start_gateway([tcp], tmp_path / "runs.db")
    gateways.append(gw)
    for _ in range(2):  # one running, one queued: the pod refuses the next
        assert gw.request("POST", "/v1/tasks/sleep?wait=0", {"seconds": 3}).status == 202
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = gw.request("POST", "/v1/tasks/add?wait=0", {"x": 1, "y": 2}, headers=key)
    assert first.status == 202
    again = gw.request("POST", "/v1/tasks/add?wait=0.5", {"x": 1, "y": 2}, headers=key)
    assert again.status == 202 and again.json["id"] == first.json["id"], again.body
    run = gw.request("GET", f"/v1/runs/{first.json['id']}?wait=30").json
    assert run["status"] == "succeeded" and run["result"] == 3


def test_a_run_that_cannot_be_recorded_is_not_sent(gateway: Gateway, tmp_path: Path) -> None:
    import sqlite3

    lock = sqlite3.connect(gateway.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        # Asynchronous: the id would go out before the outcome, so the run is written first.
        body = {"path": str(tmp_path / "ran"), "token": "x"}
        reply = gateway.request("POST", "/v1/tasks/record?wait=0", body)
        assert reply.status == 503 and reply.json["error"]["type"] == "store_unavailable", reply.body
        assert reply.headers["Retry-After"]
        # Synchronous, once a write has failed: refused the same way, not run.
        reply = gateway.request("POST", "/v1/tasks/record", body)
        assert reply.status == 503 and reply.json["error"]["type"] == "store_unavailable", reply.body
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert not (tmp_path / "ran").exists(), "a run that is not on disk must not run"
    assert gateway.request("POST", "/v1/tasks/add", {"x": 1, "y": 2}).json["result"] == 3


def test_a_sync_runs_outcome_is_answered_only_once_it_is_on_disk(gateway: Gateway, tmp_path: Path) -> None:
    """A sync POST without a key is sent at once and written once, with its outcome: while the store
    cannot be written, the task runs but its caller hears nothing; once it can, the answer comes
    and the run is on disk, as GET shows."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    ran = tmp_path / "ran"
    lock = sqlite3.connect(gateway.db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with ThreadPoolExecutor(1) as pool:
        try:
            answer = pool.submit(gateway.request, "POST", "/v1/tasks/record", {"path": str(ran), "token": "y"})
            wait_until(ran.exists, 30, "the sync run ran")
            assert not answer.done(), "an outcome must not be answered before it is on disk"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        reply = answer.result(timeout=30)  # the store tries the write again every second
    assert reply.status == 200 and reply.json["status"] == "succeeded", reply.body
    assert ran.read_text() == "y\n"
    stored = gateway.request("GET", f"/v1/runs/{reply.json['id']}").json
    assert stored["status"] == "succeeded" and stored["task"] == "record"


def test_a_sync_run_whose_wait_ends_first_is_on_disk_before_its_202(gateway: Gateway) -> None:
    import sqlite3

    reply = gateway.request("POST", "/v1/tasks/sleep?wait=0.2", {"seconds": 1.5})
    assert reply.status == 202, reply.body
    run_id = reply.json["id"]
    # On disk, unfinished: a gateway that restarted now would find it and deal with it.
    with contextlib.closing(sqlite3.connect(gateway.db)) as db:
        assert db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone() == ("running",)
    final = gateway.request("GET", f"/v1/runs/{run_id}?wait=30").json
    assert final["status"] == "succeeded" and final["result"] == 1.5


def test_odd_requests_get_the_documented_errors(gateway: Gateway) -> None:
    import http.client

    def raw_headers(name: str, value: bytes) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        conn.putrequest("POST", "/v1/tasks/add")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", "16")
        if name != "Authorization":
            conn.putheader("Authorization", f"Bearer {gateway.token}")
        conn.putheader(name, value)
        conn.endheaders(b'{"x": 1, "y": 2}')
        status = conn.getresponse().status
        conn.close()
        return status

    assert raw_headers("Authorization", b"Bearer \xff") == 401
    assert raw_headers("Idempotency-Key", b"a\xffb") == 422
    nested = b"[" * 100_000 + b"]" * 100_000
    assert gateway.request("POST", "/v1/tasks/add", raw=nested).status == 400
    reply = gateway.request("PUT", "/v1/tasks/add", {"x": 1})
    assert reply.status == 405 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json["error"]["type"] == "method_not_allowed" and "POST" in reply.headers["Allow"]


def test_http_client_ping_reads_the_gateway_readiness(gateway: Gateway) -> None:
    from neutrino import Client

    with Client(f"http://127.0.0.1:{gateway.port}", token=gateway.token) as client:
        assert client.ping()["ready"] is True
