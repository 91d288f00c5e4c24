"""Traces end to end (issue 13): a real gateway, orchestrator, workers and model server started with the
standard `OTEL_*` variables export to an OTLP/HTTP receiver inside the test, and one run that calls a
model makes one trace: gateway request -> queue wait and run in the worker -> model call -> model
server request, with the model server's batch linked to the request it served. Without the
variables nothing is exported and no worker imports OpenTelemetry, and runs still carry a trace id."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from neutrino_model_server.testing import ServerProcess, start_model_server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from .conftest import ROOT, Orchestrator, free_port, start_orchestrator, wait_until
from .gateway_harness import Gateway, start_gateway

APP = "tests.apps.tracing_app:app"
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
SERVER_KIND = ProtoSpan.SPAN_KIND_SERVER
pytestmark = pytest.mark.timeout(120)


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    start_ns: int
    end_ns: int


@dataclass
class Receiver:
    """An OTLP/HTTP trace endpoint (`POST /v1/traces`, protobuf) keeping every span it is sent."""

    port: int = 0
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        self.spans.append(
                            Span(
                                service=resource.get("service.name", ""),
                                name=s.name,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_id=s.parent_span_id.hex(),
                                kind=s.kind,
                                attributes={a.key: _value(a.value) for a in s.attributes},
                                links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                            )
                        )

    def named(self, name: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.name == name]


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            received.add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received
    server.shutdown()
    server.server_close()


@dataclass
class Stack:
    gateway: Gateway
    orchestrator: Orchestrator
    model: ServerProcess


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Stack]]:
    """`stack(env)`: model server, task pod and gateway, each started with `env`; stopped at teardown."""
    started: list[Any] = []

    def _start(env: dict[str, str]) -> Stack:
        model = start_model_server(APP, "double", cwd=ROOT, env=env)
        started.append(model)
        model.wait_ready()
        tcp = f"tcp://127.0.0.1:{free_port()}"
        orch = start_orchestrator(
            "--frontend", tcp, workers=1, app=APP, env={**env, "NEUTRINO_MODEL_DOUBLE_URL": model.url}
        )
        started.append(orch)
        gateway = start_gateway([tcp], tmp_path / "runs.db", "--model", f"double={model.url}", env=env)
        started.append(gateway)
        return Stack(gateway, orch, model)

    yield _start
    for process in reversed(started):
        process.stop()


def otel_env(receiver: Receiver) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SDK_DISABLED": "false",
    }


def run_doubled(gateway: Gateway, headers: dict[str, str]) -> dict[str, Any]:
    reply = gateway.request("POST", "/v1/tasks/doubled?wait=30", {"x": 21}, headers=headers)
    assert reply.status == 200, reply.body
    assert reply.json["result"] == 42
    record = gateway.request("GET", f"/v1/runs/{reply.json['id']}")
    assert record.status == 200, record.body
    run: dict[str, Any] = record.json
    return run


def test_a_run_that_calls_a_model_is_one_trace(receiver: Receiver, stack: Callable[[dict[str, str]], Stack]) -> None:
    services = stack(otel_env(receiver))
    run = run_doubled(services.gateway, {"traceparent": TRACEPARENT})
    assert run["trace_id"] == CALLER_TRACE_ID, "the run continues the caller's trace"

    names = ("POST /v1/tasks/{name}", "neutrino.queue", "neutrino.run doubled", "neutrino.model double")
    names += ("POST /v1/models/{name}/predict", "neutrino.batch")
    wait_until(lambda: all(receiver.named(n) for n in names), what=f"spans {names} at the receiver")
    (request,) = receiver.named("POST /v1/tasks/{name}")
    (queue,) = receiver.named("neutrino.queue")
    (worker,) = receiver.named("neutrino.run doubled")
    (call,) = receiver.named("neutrino.model double")
    (served,) = receiver.named("POST /v1/models/{name}/predict")
    (batch,) = receiver.named("neutrino.batch")

    assert {s.trace_id for s in (request, queue, worker, call, served, batch)} == {CALLER_TRACE_ID}
    assert request.service == queue.service == "neutrino-gateway"
    assert worker.service == call.service == "neutrino-worker"
    assert served.service == batch.service == "neutrino-model-server"
    # The chain: caller -> gateway request -> (queue wait, run in the worker) -> model call -> model server.
    assert request.parent_id == CALLER_SPAN_ID
    assert queue.parent_id == request.span_id and worker.parent_id == request.span_id
    assert call.parent_id == worker.span_id
    assert served.parent_id == call.span_id
    assert (served.trace_id, served.span_id) in batch.links, "the batch links the request it served"
    # The run id names the run on the gateway's spans and on the worker's.
    for span in (request, queue, worker):
        assert span.attributes["neutrino.run_id"] == run["id"], span
        assert span.attributes["neutrino.task"] == "doubled"
    assert worker.attributes["neutrino.attempt"] == 1 and queue.attributes["neutrino.attempts"] == 1
    assert batch.attributes["neutrino.batch_size"] == 1
    assert request.attributes["http.response.status_code"] == 200
    assert queue.start_ns <= queue.end_ns and queue.start_ns >= request.start_ns


def test_without_a_traceparent_the_gateway_starts_the_trace(
    receiver: Receiver, stack: Callable[[dict[str, str]], Stack]
) -> None:
    services = stack(otel_env(receiver))
    run = run_doubled(services.gateway, {})
    names = ("POST /v1/tasks/{name}", "neutrino.run doubled")
    wait_until(lambda: all(receiver.named(n) for n in names), what=f"spans {names} at the receiver")
    (request,) = receiver.named("POST /v1/tasks/{name}")
    (worker,) = receiver.named("neutrino.run doubled")
    assert request.parent_id == "" and worker.parent_id == request.span_id
    assert run["trace_id"] == request.trace_id == worker.trace_id


def test_each_run_on_one_worker_has_its_own_parent_and_run_id(
    receiver: Receiver, stack: Callable[[dict[str, str]], Stack]
) -> None:
    """The worker reuses the parent context of the last task's trace context: a new one must not."""
    services = stack(otel_env(receiver))
    runs = [run_doubled(services.gateway, {}) for _ in range(2)]
    names = ("neutrino.run doubled", "POST /v1/tasks/{name}")
    wait_until(lambda: all(len(receiver.named(n)) == 2 for n in names), what="two request and worker spans")
    requests = {s.attributes["neutrino.run_id"]: s for s in receiver.named("POST /v1/tasks/{name}")}
    for worker in receiver.named("neutrino.run doubled"):
        request = requests[worker.attributes["neutrino.run_id"]]
        assert (worker.trace_id, worker.parent_id) == (request.trace_id, request.span_id)
    assert {s.attributes["neutrino.run_id"] for s in receiver.named("neutrino.run doubled")} == {r["id"] for r in runs}


def test_a_model_call_through_the_gateway_continues_the_trace(
    receiver: Receiver, stack: Callable[[dict[str, str]], Stack]
) -> None:
    services = stack(otel_env(receiver))
    reply = services.gateway.request(
        "POST", "/v1/models/double/predict", {"inputs": 4}, headers={"traceparent": TRACEPARENT}
    )
    assert reply.status == 200 and reply.json == {"outputs": 8}, reply.body

    def by_service(service: str) -> list[Span]:
        with receiver.lock:
            return [s for s in receiver.spans if s.service == service and s.kind == SERVER_KIND]

    services_ = ("neutrino-gateway", "neutrino-model-server")
    wait_until(lambda: all(by_service(name) for name in services_), what="both server spans")
    (front_door,) = by_service("neutrino-gateway")
    (replica,) = by_service("neutrino-model-server")
    assert front_door.trace_id == replica.trace_id == CALLER_TRACE_ID
    assert front_door.parent_id == CALLER_SPAN_ID and replica.parent_id == front_door.span_id


@pytest.mark.parametrize(
    "switch", [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}]
)
def test_off_nothing_is_exported_and_workers_never_import_opentelemetry(
    receiver: Receiver, stack: Callable[[dict[str, str]], Stack], switch: dict[str, str], tmp_path: Path
) -> None:
    # The receiver's address is there, but tracing is not switched on (no exporter named, `none`, or disabled).
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "", **switch}
    if switch:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    services = stack(env)
    run = run_doubled(services.gateway, {"traceparent": TRACEPARENT})
    assert run["trace_id"] == CALLER_TRACE_ID, "the caller's trace id is kept with the run all the same"
    plain = run_doubled(services.gateway, {"traceparent": "not a traceparent"})
    assert plain["trace_id"] is not None and plain["trace_id"] != CALLER_TRACE_ID, "a bad header starts a new trace"
    reply = services.gateway.request("POST", "/v1/tasks/otel_modules?wait=30", {})
    assert reply.status == 200, reply.body
    assert reply.json["result"] == [], "a worker that does not trace imports no OpenTelemetry module"
    for process in (services.gateway, services.model, services.orchestrator):
        process.stop()  # a tracing process would flush what it buffered on the way out
    assert receiver.spans == []


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "'zipkin' is not an exporter Neutrino has; use one of otlp, console, none",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not an OTLP protocol",
        ),
    ],
)
def test_variables_a_service_cannot_act_on_stop_it_with_a_clear_error(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    gateway = [sys.executable, "-m", "neutrino_gateway", "--port", "0", "--db", str(tmp_path / "runs.db")]
    gateway += ["--orchestrator", "tcp://127.0.0.1:1", "--no-auth"]
    model_server = [sys.executable, "-m", "neutrino_model_server", "--app", APP, "--model", "double", "--port", "0"]
    for cmd in (gateway, model_server):
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr, done.stderr


def test_the_clients_continue_the_callers_span(receiver: Receiver, start: Callable[..., Orchestrator]) -> None:
    """`neutrino.Client` and `AsyncClient` send the current OpenTelemetry span's context with each task."""
    from neutrino import AsyncClient, Client
    from opentelemetry import trace

    orch = start(workers=1, app=APP, env=otel_env(receiver))
    caller = trace.SpanContext(int(CALLER_TRACE_ID, 16), int(CALLER_SPAN_ID, 16), is_remote=False)
    with trace.use_span(trace.NonRecordingSpan(caller)), Client(orch.address) as client:
        modules = client.call("otel_modules")
        assert "opentelemetry.sdk.trace" in modules, "a tracing worker loaded the SDK"
        client.submit("otel_modules").result(30)

    async def call_async() -> None:
        async with AsyncClient(orch.address) as aclient:
            with trace.use_span(trace.NonRecordingSpan(caller)):
                await aclient.call("otel_modules")

    asyncio.run(call_async())
    wait_until(lambda: len(receiver.named("neutrino.run otel_modules")) == 3, what="three worker spans")
    for span in receiver.named("neutrino.run otel_modules"):
        assert (span.trace_id, span.parent_id) == (CALLER_TRACE_ID, CALLER_SPAN_ID), span
        assert "neutrino.run_id" not in span.attributes, "no gateway: no run id"


GRPC_INFER = "inference.GRPCInferenceService/ModelInfer"


def test_a_grpc_inference_is_a_server_span_its_batch_links(receiver: Receiver) -> None:
    """gRPC ModelInfer makes the span the REST routes make: child of the `traceparent` metadata, linked
    by the batch that served it; a refused call still gets its span, with the gRPC status code."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    model = start_model_server(APP, "double", "--grpc-port", "0", cwd=ROOT, env=otel_env(receiver))
    try:
        model.wait_ready()
        client = grpcclient.InferenceServerClient(model.wait_grpc())
        tensor = grpcclient.InferInput("xs", [2], "FP64")
        tensor.set_data_from_numpy(np.array([1.0, 2.0]))
        result = client.infer("double", [tensor], headers={"traceparent": TRACEPARENT})
        assert result.as_numpy(result.get_response().outputs[0].name).tolist() == [2.0, 4.0]
        with pytest.raises(InferenceServerException, match="not 'other'"):
            client.infer("other", [tensor], headers={"traceparent": TRACEPARENT})
        client.close()
        wait_until(lambda: len(receiver.named(GRPC_INFER)) == 2 and receiver.named("neutrino.batch"), what="spans")
    finally:
        model.stop()
    served, refused = sorted(receiver.named(GRPC_INFER), key=lambda s: s.start_ns)
    (batch,) = receiver.named("neutrino.batch")
    for span in (served, refused):
        assert (span.service, span.kind) == ("neutrino-model-server", SERVER_KIND)
        assert (span.trace_id, span.parent_id) == (CALLER_TRACE_ID, CALLER_SPAN_ID), span
        assert span.attributes["rpc.system"] == "grpc" and span.attributes["rpc.method"] == "ModelInfer"
    assert served.attributes["rpc.grpc.status_code"] == 0
    assert refused.attributes["rpc.grpc.status_code"] == 5, "NOT_FOUND: an unknown model"
    assert batch.links == [(served.trace_id, served.span_id)] and batch.parent_id == served.span_id
    assert batch.attributes["neutrino.batch_size"] == 2
