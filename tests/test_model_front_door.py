"""The gateway as the one front door to models (issue 12, point 4), end to end: a real gateway in front of
real model-server replicas, tasks on a real orchestrator calling the model through the SDK, and
`tritonclient.http` unchanged as the V2 client.

A hung replica is a test-owned listener that accepts every connection and never answers, without
closing it (a stopped process, a wedged host): the gateway and the SDK's model client must pass it
over within their per-attempt timeout and get the answer from the healthy replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from neutrino import Client, NeutrinoTimeoutError
from neutrino._model_client import ATTEMPT_TIMEOUT_ENV, ModelClient
from neutrino_model_server.testing import ServerProcess, model_replicas
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROOT, Orchestrator, free_port, wait_until
from .gateway_harness import TOKEN, Gateway, start_gateway

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.front_door_app:app"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ATTEMPT_S = 1.0
# What a call may take beyond the attempt it lost to the hung replica: the healthy replica's answer
# (milliseconds) and a loaded two-core machine's scheduling. Without a per-attempt timeout the call would
# wait out the whole deadline (DEADLINE_S), so the bound still tells the two apart.
MARGIN_S = 4.0
DEADLINE_S = 30.0
MODEL_ROUTES = [
    ("POST", "/v1/models/echo/predict"),
    ("GET", "/v2/models/echo"),
    ("GET", "/v2/models/echo/ready"),
    ("POST", "/v2/models/echo/infer"),
    ("GET", "/v2/models/echo/versions/1"),
    ("GET", "/v2/models/echo/versions/1/ready"),
    ("POST", "/v2/models/echo/versions/1/infer"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
]


class HungReplica:
    """Accepts every connection, reads nothing, answers nothing, closes nothing until the test ends."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.connections.append(self.listener.accept()[0])

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def hung() -> Iterator[HungReplica]:
    replica = HungReplica()
    yield replica
    replica.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[ServerProcess]:
    with model_replicas(APP, "echo", 1, cwd=ROOT) as servers:
        yield servers[0]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`gateway(*flags)` -> a gateway with no task pod (model routes need none), stopped at teardown."""
    started: list[Gateway] = []

    def _start(*flags: str) -> Gateway:
        pods = [f"tcp://127.0.0.1:{free_port()}"]
        gw = start_gateway(
            pods,
            tmp_path / f"runs-{len(started)}.db",
            *flags,
            wait_ready=False,
            env={"NEUTRINO_MODEL_URL_TEMPLATE": ""},
        )
        started.append(gw)
        return gw

    yield _start
    for gw in started:
        gw.stop()
        print(gw.log)  # shown when the test failed


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def infer_inputs() -> list[triton.InferInput]:
    x = triton.InferInput("x", [3], "INT64")
    x.set_data_from_numpy(np.array([4, 5, 6], dtype=np.int64), binary_data=False)
    return [x]


def test_model_routes_need_the_token(echo: ServerProcess, gateway: Callable[..., Gateway]) -> None:
    gw = gateway("--model", f"echo={echo.url}")
    for method, path in MODEL_ROUTES:
        body = {"inputs": 1} if method == "POST" else None
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
            reply = gw.request(method, path, body, headers=headers, auth=False)
            assert reply.status == 401, (path, headers, reply.body)
            assert reply.headers["WWW-Authenticate"] == 'Bearer realm="neutrino"'
            error = reply.json["error"]  # the protocol's shape under /v2, the gateway's elsewhere
            message = error if path.startswith("/v2/") else error["message"]
            assert isinstance(message, str) and "token" in message.lower(), (path, error)
            assert path.startswith("/v2/") or error["type"] == "unauthorized", (path, error)
        assert gw.request(method, path, body).status != 401, path
    client = triton.InferenceServerClient(f"127.0.0.1:{gw.port}")
    with pytest.raises(triton.InferenceServerException, match=r"\[401\] send Authorization: Bearer"):
        client.infer("echo", infer_inputs())
    assert not client.is_server_live() and not client.is_model_ready("echo")
    metrics = text_string_to_metric_families(gw.request("GET", "/metrics", auth=False).body.decode())
    counted = {
        (s.labels["route"], s.labels["code"]): s.value
        for family in metrics
        for s in family.samples
        if s.name == "neutrino_gateway_requests_total"
    }
    assert counted[("/v2/models/{name}/infer", "401")] == 4  # the three above and tritonclient's


def test_model_calls_succeed_through_the_gateway(echo: ServerProcess, gateway: Callable[..., Gateway]) -> None:
    gw = gateway("--model", f"echo={echo.url}")
    reply = gw.request("POST", "/v1/models/echo/predict", {"inputs": 7})
    assert reply.status == 200 and reply.json == {"outputs": {"x": 7, "pid": echo.proc.pid}}, reply.body
    client = triton.InferenceServerClient(f"127.0.0.1:{gw.port}")
    assert client.is_server_live(headers=AUTH) and client.is_server_ready(headers=AUTH)
    assert client.is_model_ready("echo", headers=AUTH) and client.is_model_ready("echo", "1", headers=AUTH)
    assert client.get_model_metadata("echo", headers=AUTH)["inputs"][0]["name"] == "x"
    for version in ("", "1"):
        outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("x", "pid")]
        result = client.infer("echo", infer_inputs(), model_version=version, outputs=outputs, headers=AUTH)
        assert result.as_numpy("x").tolist() == [4, 5, 6]
        assert set(result.as_numpy("pid").tolist()) == {echo.proc.pid}
    with pytest.raises(triton.InferenceServerException, match="version"):
        client.infer("echo", infer_inputs(), model_version="2", headers=AUTH)  # the replica's own 404
    reply = gw.request("GET", "/v2/health/ready")
    assert reply.status == 200 and reply.json == {"ready": True, "models": {"echo": True}}


def test_binary_tensors_pass_through_unchanged(echo: ServerProcess, gateway: Callable[..., Gateway]) -> None:
    """tritonclient's defaults (binary inputs, here binary outputs asked for too, compressed both ways) through
    the gateway; and the same binary request answered byte for byte as the replica answers it directly."""
    gw = gateway("--model", f"echo={echo.url}")
    client = triton.InferenceServerClient(f"127.0.0.1:{gw.port}")
    for compression in (None, "gzip", "deflate"):
        x = triton.InferInput("x", [3], "INT64")
        x.set_data_from_numpy(np.array([4, 5, 6], dtype=np.int64))  # binary_data=True: the default
        result = client.infer(
            "echo",
            [x],
            outputs=[triton.InferRequestedOutput(name, binary_data=True) for name in ("x", "pid")],
            headers=dict(AUTH),  # tritonclient adds its Content-Encoding to the dict it is given
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
        assert result.as_numpy("x").tolist() == [4, 5, 6] and result.as_numpy("x").dtype == np.int64, compression
        assert set(result.as_numpy("pid").tolist()) == {echo.proc.pid}
    reply = gw.request("POST", "/v2/models/echo/infer", raw=b"{}", headers={"Content-Encoding": "gzip"})
    assert reply.status == 400 and "cannot be read: Can not decode content-encoding: gzip" in reply.json["error"]
    header = b'{"inputs":[{"name":"x","shape":[2],"datatype":"INT64","parameters":{"binary_data_size":16}}],'
    header += b'"parameters":{"binary_data_output":true}}'
    body = header + np.array([7, 8], dtype=np.int64).tobytes()
    sent = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    direct = Gateway(proc=echo.proc, db=Path(), port=int(echo.url.rsplit(":", 1)[1]), token=None)
    for where in (direct, gw):
        reply = where.request("POST", "/v2/models/echo/infer", raw=body, headers=sent)
        assert reply.status == 200, reply.body
        length = int(reply.headers["Inference-Header-Content-Length"])
        assert 0 < length < len(reply.body) and b'"binary_data_size"' in reply.body[:length]
    first = direct.request("POST", "/v2/models/echo/infer", raw=body, headers=sent)
    assert (reply.body, reply.headers["Inference-Header-Content-Length"], reply.headers["Content-Type"]) == (
        first.body,
        first.headers["Inference-Header-Content-Length"],
        first.headers["Content-Type"],
    )


def test_a_hung_replica_is_passed_over_by_the_gateway(
    echo: ServerProcess, hung: HungReplica, gateway: Callable[..., Gateway]
) -> None:
    deadline = ["--request-deadline", str(DEADLINE_S), "--max-wait", "20", "--default-wait", "10"]
    flags = ["--model-attempt-timeout", str(ATTEMPT_S), *deadline]
    gw = gateway("--model", f"echo={hung.url},{echo.url}", *flags)
    client = triton.InferenceServerClient(f"127.0.0.1:{gw.port}", network_timeout=DEADLINE_S * 2)
    for i in range(4):  # each call starts at the next replica: every other one at the hung replica first
        reply, elapsed = timed(lambda i=i: gw.request("POST", "/v1/models/echo/predict", {"inputs": i}))
        assert reply.status == 200 and reply.json == {"outputs": {"x": i, "pid": echo.proc.pid}}, reply.body
        assert elapsed < ATTEMPT_S + MARGIN_S, elapsed
        result, elapsed = timed(lambda: client.infer("echo", infer_inputs(), headers=AUTH))
        assert set(result.as_numpy("pid").tolist()) == {echo.proc.pid}
        assert elapsed < ATTEMPT_S + MARGIN_S, elapsed
    assert len(hung.connections) >= 4, "the hung replica was not tried"
    # A lone URL (a Kubernetes Service, maybe: another connection may reach another pod) gets two tries,
    # then a 504 that names it.
    alone = gateway("--model", f"echo={hung.url}", *flags)
    before = len(hung.connections)
    reply, elapsed = timed(lambda: alone.request("POST", "/v1/models/echo/predict", {"inputs": 1}))
    assert reply.status == 504 and reply.json["error"]["type"] == "replica_timeout", reply.body
    assert reply.json["error"]["message"].count(f"{hung.url}: no answer within 1s") == 2
    assert elapsed < 2 * ATTEMPT_S + MARGIN_S, elapsed
    wait_until(lambda: len(hung.connections) - before == 2, what="two connections to the lone hung replica")
    client = triton.InferenceServerClient(f"127.0.0.1:{alone.port}", network_timeout=DEADLINE_S * 2)
    with pytest.raises(triton.InferenceServerException, match=f"504.*{hung.url}: no answer within 1s"):
        client.infer("echo", infer_inputs(), headers=AUTH)
    reply = alone.request("GET", "/v2/health/ready")
    assert reply.status == 400 and reply.json == {"ready": False, "models": {"echo": False}}


def test_a_hung_replica_is_passed_over_by_a_task_calling_the_model(
    echo: ServerProcess, hung: HungReplica, start: Callable[..., Orchestrator]
) -> None:
    env = {"NEUTRINO_MODEL_ECHO_URL": f"{hung.url},{echo.url}", "NEUTRINO_MODEL_ATTEMPT_TIMEOUT": str(ATTEMPT_S)}
    orch = start(workers=1, app=APP, env=env)  # one worker: one model client, whose turns the calls share
    with Client(orch.address) as client:
        for task in ("ask", "ask", "ask_async", "ask_async"):
            result, elapsed = timed(lambda task=task: client.call(task, 3))
            assert result == {"x": 3, "pid": echo.proc.pid}, task
            assert elapsed < ATTEMPT_S + MARGIN_S, (task, elapsed)
    assert len(hung.connections) >= 2, "the hung replica was not tried"


def test_the_model_client_gives_each_try_a_third_of_the_call_by_default(
    echo: ServerProcess, hung: HungReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a per-attempt timeout set, a call of timeout_s=3 gives each try 1 s: the hung replica costs
    one of them, blocking or async; with only the hung replica the call ends at its timeout, naming it."""
    monkeypatch.delenv(ATTEMPT_TIMEOUT_ENV, raising=False)
    client = ModelClient("echo", (hung.url, echo.url))
    for _ in range(2):
        answer, elapsed = timed(lambda: client.predict(5, timeout_s=3 * ATTEMPT_S))
        assert answer == {"x": 5, "pid": echo.proc.pid} and elapsed < ATTEMPT_S + MARGIN_S, elapsed

    async def both() -> list[Any]:
        try:
            return [await client.apredict(i, timeout_s=3 * ATTEMPT_S) for i in range(2)]
        finally:
            await client.aclose()

    answers, elapsed = timed(lambda: asyncio.run(both()))
    assert answers == [{"x": 0, "pid": echo.proc.pid}, {"x": 1, "pid": echo.proc.pid}]
    assert elapsed < ATTEMPT_S + MARGIN_S, elapsed
    assert len(hung.connections) >= 2, "the hung replica was not tried"
    alone = ModelClient("echo", (hung.url,))
    with pytest.raises(NeutrinoTimeoutError, match=f"did not answer within 2s .*{hung.url}: no answer within"):
        alone.predict(5, timeout_s=2.0)


def test_a_bad_attempt_timeout_is_refused_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(ATTEMPT_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=f"{ATTEMPT_TIMEOUT_ENV}=.*: write a positive number of seconds"):
            ModelClient("echo", ("http://127.0.0.1:1",))
    monkeypatch.setenv(ATTEMPT_TIMEOUT_ENV, "2.5")
    assert ModelClient("echo", ("http://127.0.0.1:1",)).attempt_timeout_s == 2.5
    with pytest.raises(ValueError, match="attempt_timeout_s must be a positive number of seconds"):
        ModelClient("echo", ("http://127.0.0.1:1",), attempt_timeout_s=0)
