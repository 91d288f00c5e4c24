"""The model server as a process: both inference APIs, readiness, load failures, batching, errors, retries."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from neutrino import ModelError, ModelInputError
from neutrino._model_client import ModelClient
from neutrino_model_server.config import EXIT_LOAD_FAILED
from neutrino_model_server.testing import ServerProcess


@pytest.fixture(scope="module")
def digits_data() -> tuple[list[list[float]], list[int]]:
    """Some images, and what the same model trained in this process says they are."""
    from sklearn.datasets import load_digits

    from examples.models.app import Digits  # the repository root is on sys.path (conftest.py)

    images = load_digits().data[:40].tolist()
    local = Digits()
    local.load()
    return images, local.predict(images)


def http(
    method: str, url: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, dict[str, str], Any]:
    data = None
    if body is not None:
        data = msgpack.packb(body) if content_type == "application/msgpack" else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": content_type}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, dict(err.headers), err.read()
    if headers.get("Content-Type", "").startswith("application/msgpack"):
        return status, headers, msgpack.unpackb(raw)
    return status, headers, json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_predict_over_json_and_msgpack_matches_local_inference(
    digits_replicas: list[ServerProcess], digits_data: Any
) -> None:
    images, expected = digits_data
    url = digits_replicas[0].url + "/v1/models/digits/predict"
    for i in range(5):
        status, _, doc = http("POST", url, {"inputs": images[i]})
        assert (status, doc) == (200, {"outputs": expected[i]})
        status, headers, doc = http("POST", url, {"inputs": images[i]}, "application/msgpack")
        assert (status, doc) == (200, {"outputs": expected[i]}) and headers["Content-Type"].startswith(
            "application/msgpack"
        )


def test_v2_infer_follows_the_open_inference_protocol(digits_replicas: list[ServerProcess], digits_data: Any) -> None:
    images, expected = digits_data
    base = digits_replicas[0].url
    assert http("GET", base + "/v2/health/live")[0] == 200
    assert http("GET", base + "/v2/health/ready")[:3:2] == (200, {"ready": True})
    assert http("GET", base + "/v2/models/digits/ready")[0] == 200
    status, _, meta = http("GET", base + "/v2/models/digits")
    assert status == 200 and meta["name"] == "digits" and meta["versions"] == ["1"] and meta["platform"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "digit", "datatype": "INT64", "shape": [-1]}]
    flat = [v for image in images[:3] for v in image]
    request = {"id": "req-1", "inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": flat}]}
    status, _, doc = http("POST", base + "/v2/models/digits/infer", request)
    assert status == 200
    assert doc == {
        "model_name": "digits",
        "model_version": "1",
        "id": "req-1",
        "outputs": [{"name": "digit", "shape": [3], "datatype": "INT64", "data": expected[:3]}],
    }
    nested = {"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": images[3:5]}]}
    status, _, doc = http("POST", base + "/v2/models/digits/versions/1/infer", nested)
    assert status == 200 and doc["outputs"][0]["data"] == expected[3:5] and "id" not in doc
    # Protocol errors: {"error": "<message>"} with a 4xx.
    bad_shape = {"inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": flat[:10]}]}
    status, _, doc = http("POST", base + "/v2/models/digits/infer", bad_shape)
    assert status == 400 and "192 elements" in doc["error"]
    bad_type = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP33", "data": flat[:64]}]}
    assert http("POST", base + "/v2/models/digits/infer", bad_type)[0] == 400
    assert http("POST", base + "/v2/models/other/infer", request)[0] == 404


def test_readiness_is_false_during_a_slow_load(serve: Callable[..., ServerProcess], tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    server = serve("slow", env={"SLOW_LOAD_GATE": str(gate)})
    base = server.wait_listening()
    assert http("GET", base + "/v2/health/live")[0] == 200
    status, _, doc = http("GET", base + "/v2/health/ready")
    assert (status, doc) == (400, {"ready": False})  # OIP: 4xx means false
    assert http("GET", base + "/v2/models/slow/ready")[0] == 400
    status, headers, doc = http("POST", base + "/v1/models/slow/predict", {"inputs": 1})
    assert status == 503 and headers["Retry-After"] == "1" and doc["error"]["type"] == "not_ready"
    gate.touch()
    server.wait_ready()
    assert http("POST", base + "/v1/models/slow/predict", {"inputs": 1})[2] == {"outputs": 1}


def test_a_failing_load_exits_non_zero_with_its_traceback(serve: Callable[..., ServerProcess]) -> None:
    server = serve("broken")
    assert server.proc.wait(60) == EXIT_LOAD_FAILED
    server.wait_for(r"Traceback")  # the whole log is in once the process is gone
    log = server.log
    assert "load() of model 'broken' failed: RuntimeError: weights file is corrupt (on purpose)" in log
    assert "Traceback (most recent call last)" in log and "model_server_app.py" in log


def test_an_unknown_model_exits_with_a_message(serve: Callable[..., ServerProcess]) -> None:
    server = serve("nope")
    assert server.proc.wait(60) == 3
    server.wait_for("has no model named 'nope'; its models: broken, echo, noop, slow")


async def _post_all(url: str, bodies: list[Any]) -> list[tuple[int, Any]]:
    async with aiohttp.ClientSession() as session:

        async def one(body: Any) -> tuple[int, Any]:
            async with session.post(url, json={"inputs": body}) as resp:
                return resp.status, await resp.json()

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_concurrent_requests_are_batched_and_a_bad_input_fails_alone(serve: Callable[..., ServerProcess]) -> None:
    server = serve("echo")
    base = server.wait_ready()
    url = base + "/v1/models/echo/predict"
    bodies: list[Any] = list(range(64))
    bodies.insert(30, {"not": "allowed"})
    answers = asyncio.run(_post_all(url, bodies))
    for body, (status, doc) in zip(bodies, answers, strict=True):
        if isinstance(body, dict):
            assert status == 422 and doc["error"] == {
                "type": "ValueError",
                "message": "echo takes no objects",
                "detail": [{"loc": ["inputs"], "msg": "echo takes no objects", "type": "value_error"}],
            }
        else:
            assert (status, doc) == (200, {"outputs": body})
    batches = metric(base, "neutrino_model_batch_size_count")
    inputs = metric(base, "neutrino_model_batch_size_sum")
    assert inputs == 64 and batches < 64 / 2, f"64 inputs in {batches} batches: not batched"
    assert metric(base, "neutrino_model_requests_total") >= 65
    assert metric(base, "neutrino_model_queue_depth") == 0 and metric(base, "neutrino_model_requests_in_flight") == 0


def test_a_predict_error_answers_its_whole_batch(serve: Callable[..., ServerProcess]) -> None:
    server = serve("echo", "--batch-wait-ms", "200")
    base = server.wait_ready()
    url = base + "/v1/models/echo/predict"
    # "slow" runs alone (0.5 s); the three sent meanwhile queue behind it and meet in the next batch.

    async def scenario() -> list[tuple[int, Any]]:
        slow = asyncio.ensure_future(_post_all(url, ["slow"]))
        while metric(base, "neutrino_model_requests_in_flight") < 1 or metric(base, "neutrino_model_queue_depth") > 0:
            await asyncio.sleep(0.005)  # polling the server's own gauges: "slow" is in predict
        rest = await _post_all(url, [1, "boom", 2])
        return (await slow) + rest

    answers = asyncio.run(scenario())
    assert answers[0] == (200, {"outputs": "slow"})
    for status, doc in answers[1:]:
        assert status == 500 and doc["error"]["type"] == "ValueError" and doc["error"]["message"] == "boom in the batch"
        assert "Traceback" in doc["error"]["traceback"]
    status, _, doc = http("POST", url, {"inputs": "short"})
    assert (
        status == 500
        and doc["error"]["type"] == "BatchShapeError"
        and "one output per input" in doc["error"]["message"]
    )
    assert http("POST", url, {"inputs": 3})[2] == {"outputs": 3}  # the server carries on


def test_a_full_queue_answers_429_with_retry_after(serve: Callable[..., ServerProcess]) -> None:
    server = serve("echo", "--max-queue", "1", "--max-batch-size", "1")
    base = server.wait_ready()
    answers = asyncio.run(_post_all(base + "/v1/models/echo/predict", list(range(40))))
    statuses = [s for s, _ in answers]
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    assert all(doc["error"]["type"] == "busy" for s, doc in answers if s == 429)
    assert http("POST", base + "/v1/models/echo/predict", {"inputs": 1})[2] == {"outputs": 1}


def test_the_request_deadline_answers_504(serve: Callable[..., ServerProcess]) -> None:
    server = serve("echo", "--request-timeout", "0.2")
    base = server.wait_ready()
    status, _, doc = http("POST", base + "/v1/models/echo/predict", {"inputs": "slow"})
    assert status == 504 and doc["error"]["type"] == "deadline_exceeded"


def test_sdk_client_spreads_over_replicas_and_survives_one_dying(
    digits_data: Any, serve: Callable[..., ServerProcess]
) -> None:
    images, expected = digits_data
    replicas = [serve("digits", app="examples.models.app:app") for _ in range(2)]
    urls = tuple(r.wait_ready() for r in replicas)
    client = ModelClient("digits", urls)
    assert client.predict(images[0]) == expected[0]
    with pytest.raises(ModelInputError) as info:
        client.predict([1, 2, 3])
    assert info.value.status == 422 and "64 pixel values" in info.value.message
    errors: list[BaseException] = []
    done = [0]
    killed = threading.Event()
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(60):
            j = (k * 7 + i) % len(images)
            try:
                got = client.predict(images[j])
            except BaseException as exc:
                errors.append(exc)
                return
            if got != expected[j]:
                errors.append(AssertionError(f"image {j}: {got} != {expected[j]}"))
            with lock:
                done[0] += 1
                if done[0] == 300:
                    killed.set()

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(worker, k) for k in range(16)]
        assert killed.wait(60)
        served_before = [metric(url, "neutrino_model_batch_size_sum") for url in urls]
        replicas[1].kill()  # SIGKILL under load: its in-flight requests break mid-way
        for f in futures:
            f.result(60)
    assert not errors, errors[:3]
    assert done[0] == 16 * 60
    assert all(n > 0 for n in served_before), f"requests were not spread: {served_before}"


def test_async_client_reaches_replicas(digits_replicas: list[ServerProcess], digits_data: Any) -> None:
    images, expected = digits_data
    client = ModelClient("digits", tuple(r.url for r in digits_replicas))

    async def main() -> list[Any]:
        try:
            return list(await asyncio.gather(*(client.apredict(image) for image in images)))
        finally:
            await client.aclose()

    assert asyncio.run(main()) == expected

    async def refused() -> None:
        try:
            await client.apredict({"x": 1})
        finally:
            await client.aclose()

    with pytest.raises(ModelError):
        asyncio.run(refused())


def test_v2_edge_cases_from_review(digits_replicas: list[ServerProcess], serve: Callable[..., ServerProcess]) -> None:
    base = digits_replicas[0].url
    # A BYTES tensor of shape [N] is N string inputs (each row a str, not an array).
    echo = serve("echo")
    echo.wait_ready()
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    status, _, doc = http("POST", echo.url + "/v2/models/echo/infer", body)
    assert status == 200 and doc["outputs"][0]["data"] == ["a", "b"], doc
    # Requested outputs the model does not produce: 400, not a silent empty answer.
    body = {
        "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
        "outputs": [{"name": "nosuch"}],
    }
    status, _, doc = http("POST", base + "/v2/models/digits/infer", body)
    assert status == 400 and "nosuch" in doc["error"]
    # Deep nesting is a bad request, in the protocol's error shape.
    req = urllib.request.Request(base + "/v2/models/digits/infer", b"[" * 100_000 + b"]" * 100_000, method="POST")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("expected 400")
    except urllib.error.HTTPError as err:
        assert err.code == 400 and "error" in json.loads(err.read())


def test_inputs_of_clients_that_hung_up_never_reach_predict(serve: Callable[..., ServerProcess]) -> None:
    echo = serve("echo")
    echo.wait_ready()
    url = echo.url + "/v1/models/echo/predict"
    with ThreadPoolExecutor(1) as pool:
        kept = pool.submit(http, "POST", url, {"inputs": "slow"})  # predict busy for 0.5 s (max_concurrency 1)
        while metric(echo.url, "neutrino_model_requests_in_flight") < 1:
            pass
        clients = []
        for i in range(3):  # queued behind it, then each client hangs up
            body = json.dumps({"inputs": f"gone-{i}"}).encode()
            head = "POST /v1/models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            sock = socket.create_connection(("127.0.0.1", int(echo.url.rsplit(":", 1)[1])))
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            clients.append(sock)
        while metric(echo.url, "neutrino_model_queue_depth") < 3:
            pass
        for sock in clients:
            sock.close()
        assert kept.result(30)[0] == 200
    assert http("POST", url, {"inputs": "after"})[2] == {"outputs": "after"}
    # "slow" ran (alone or with others already queued) and "after" ran: the three abandoned inputs did not.
    assert metric(echo.url, "neutrino_model_batch_size_sum") == 2
