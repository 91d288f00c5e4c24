"""Limits, end to end (issue 11 point 7): every size is bounded by a flag and answered with a typed
error, a full disk under the gateway's SQLite file is a 503 that loses and corrupts nothing, and
slow clients cannot hold the gateway's (or a model server's) connections.

Real processes throughout: the orchestrator binary with its zygote and workers, the gateway and
the model server as `python -m`, raw sockets for the slow clients.
"""

from __future__ import annotations

import http.client
import json
import resource
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import neutrino_protocol as p
import pytest
from neutrino import Client, TaskError
from neutrino_model_server.testing import start_model_server

from .conftest import ROOT, Orchestrator, free_port, start_orchestrator
from .gateway_harness import TOKEN, Gateway, start_gateway

APP = "tests.apps.limits_app:app"
MODEL_TESTS = ROOT / "services" / "model-server-py" / "tests"


@pytest.fixture
def stack() -> Iterator[list[Any]]:
    """Processes a test starts (orchestrators, gateways, model servers): each stopped by pid at teardown."""
    started: list[Any] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def task_pod(stack: list[Any], *args: str) -> str:
    tcp = f"tcp://127.0.0.1:{free_port()}"
    stack.append(start_orchestrator("--frontend", tcp, *args, workers=1, app=APP))
    return tcp


def gateway(stack: list[Any], pods: list[str], db: Path, *args: str) -> Gateway:
    gw = start_gateway(pods, db, *args)
    stack.append(gw)
    return gw


# -- results and frames --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_result_over_the_limit_is_a_typed_error_and_the_worker_serves_on(stack: list[Orchestrator]) -> None:
    orch = start_orchestrator("--max-message-bytes", "10000", workers=1, app=APP)
    stack.append(orch)
    with Client(orch.address) as client:
        assert client.call("blob", 5_000) == b"x" * 5_000
        # Over the limit, and over the 4x socket cap that would drop the connection if it were sent.
        for size in (20_000, 100_000):
            with pytest.raises(TaskError) as caught:
                client.call("blob", size)
            assert caught.value.kind == "result_too_large", caught.value
            assert "--max-message-bytes" in str(caught.value)
        assert client.call("add", 1, 2) == 3  # the same (only) worker, still serving
    assert "replacing it" not in orch.log  # no worker died or was killed on the way


@pytest.mark.timeout(60)
def test_every_task_gets_exactly_one_answer_around_oversized_results(stack: list[Orchestrator], raw: Any) -> None:
    orch = start_orchestrator("--max-message-bytes", "10000", workers=1, app=APP)
    stack.append(orch)
    sock = raw(orch.address)
    sizes = {i: (50_000 if i % 3 == 0 else 100) for i in range(1, 31)}
    for i, size in sizes.items():
        sock.send_multipart(p.SubmitTask(id=i, task="blob", payload=msgpack.packb([[size], {}])).encode())
    marker = len(sizes) + 1
    sock.send_multipart(p.SubmitTask(id=marker, task="add", payload=msgpack.packb([[1, 1], {}])).encode())
    replies: list[Any] = []
    while not any(r.id == marker for r in replies):
        assert sock.poll(20_000), f"no answer after {len(replies)} replies"
        replies.append(p.decode(sock.recv_multipart()))
    by_id = [r.id for r in replies]
    assert sorted(by_id) == [*sizes, marker], "each task answered exactly once"
    for reply in replies:
        if reply.id == marker:
            continue
        if sizes[reply.id] > 10_000:
            assert reply.status == "error" and reply.error.kind == "result_too_large", reply
        else:
            assert reply.status == "ok", reply


@pytest.mark.timeout(90)
def test_the_gateway_answers_size_refusals_with_typed_errors(stack: list[Any], tmp_path: Path) -> None:
    pod = task_pod(stack, "--max-message-bytes", "10000")
    gw = gateway(stack, [pod], tmp_path / "runs.db", "--max-body-bytes", "50000")
    # Over the gateway's own limit: 413 before anything is recorded.
    reply = gw.request("POST", "/v1/tasks/echo_text", {"text": "x" * 60_000})
    assert reply.status == 413 and reply.json["error"]["type"] == "payload_too_large", reply.body
    # Within it, but over the task pod's frame limit: the pod's `too_large` rejection, as a 413.
    reply = gw.request("POST", "/v1/tasks/echo_text", {"text": "x" * 20_000})
    assert reply.status == 413 and reply.json["error"]["detail"]["kind"] == "too_large", reply.body
    rejected = reply.json["error"]["detail"]["run_id"]
    # A result over the frame limit: a failed run of kind result_too_large.
    reply = gw.request("POST", "/v1/tasks/blob", {"n": 20_000})
    assert reply.status == 500 and reply.json["error"]["type"] == "ResultTooLargeError", reply.body
    too_big = reply.json["error"]["detail"]["run_id"]
    reply = gw.request("POST", "/v1/tasks/add", {"x": 2, "y": 3})
    assert reply.status == 200 and reply.json["result"] == 5
    # Exactly one outcome each, as recorded.
    for run_id, kind in ((rejected, "too_large"), (too_big, "result_too_large")):
        record = gw.request("GET", f"/v1/runs/{run_id}").json
        assert record["status"] == "failed" and record["error"]["kind"] == kind, record


# -- a full disk under the gateway's run store ---------------------------------------------------


def _limited_gateway(pods: list[str], db: Path, max_file_bytes: int) -> Gateway:
    """A gateway process that may write no file past `max_file_bytes`: writes beyond fail with
    EFBIG (SIGXFSZ ignored), as on a full disk."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    cmd = [sys.executable, "-m", "neutrino_gateway", "--port", "0", "--db", str(db), "--auth-token", TOKEN]
    cmd += ["--ping-interval", "0.1", "--pod-timeout", "1.0"]
    for pod in pods:
        cmd += ["--orchestrator", pod]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=limit
    )
    gw = Gateway(proc=proc, db=db)
    gw.follow()
    gw.port = int(gw.wait_for(r"gateway listening on http://[^:]+:(\d+)").group(1))
    gw.wait_ready()
    return gw


@pytest.mark.timeout(180)
def test_a_full_disk_is_503_and_loses_or_corrupts_nothing(stack: list[Any], tmp_path: Path) -> None:
    pod = task_pod(stack)
    db = tmp_path / "runs.db"
    gw = _limited_gateway([pod], db, 512 * 1024)
    stack.append(gw)
    text = "y" * 8_000
    accepted: dict[str, str] = {}  # run id -> the text it echoes
    refusals = []
    # Runs that take a moment: most are still queued when the file stops growing, so both the
    # inserts of new runs and the outcomes of accepted ones meet the full disk.
    for i in range(400):
        body = {"text": f"{i}:{text}", "seconds": 0.05}
        reply = gw.request("POST", "/v1/tasks/slow_echo?wait=0&retries=1", body)
        if reply.status == 503:
            refusals.append(reply)
            if len(refusals) == 3:
                break
            continue
        assert reply.status == 202, reply.body
        accepted[reply.json["id"]] = body["text"]
    assert refusals, "the store never filled up: raise the payload or lower the limit"
    assert accepted, "nothing was accepted before the store filled up"
    for reply in refusals:
        error = reply.json["error"]
        assert error["type"] == "store_unavailable" and reply.headers["Retry-After"], reply.body
    gw.wait_for(r"writing it failed, trying again")  # an outcome met the full disk
    # What was accepted stays readable; an outcome shows only once it is on disk.
    seen: dict[str, str] = {}
    for run_id, echoed in accepted.items():
        record = gw.request("GET", f"/v1/runs/{run_id}")
        assert record.status == 200, record.body
        assert record.json["status"] in ("queued", "running", "succeeded"), record.json
        if record.json["status"] == "succeeded":
            assert record.json["result"] == echoed
            seen[run_id] = echoed
    assert len(seen) < len(accepted), "no outcome met the full disk"
    assert gw.request("GET", "/healthz").status == 200
    gw.stop()

    with sqlite3.connect(db) as conn:  # the limit lifted: the file is whole
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = dict(conn.execute("SELECT id, status FROM runs").fetchall())
    conn.close()
    assert set(stored) == set(accepted), "exactly the accepted runs are recorded: none lost, none from a 503"
    assert all(stored[run_id] == "succeeded" for run_id in seen)

    gw2 = gateway(stack, [pod], db)
    for run_id, echoed in accepted.items():
        record = gw2.request("GET", f"/v1/runs/{run_id}?wait=30").json
        # retries=1: a run whose outcome was never written is sent again, and succeeds.
        assert record["status"] == "succeeded" and record["result"] == echoed, record
    gw2.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM runs WHERE status = 'succeeded'").fetchone() == (len(accepted),)
    conn.close()


# -- slow clients --------------------------------------------------------------------------------


@dataclass
class SlowConnection:
    sock: socket.socket
    opened: float
    closed_after_s: float | None = None  # when the server closed it, from its opening
    answer: bytes = b""


def trickle(
    port: int, count: int, head: bytes, drip: bytes, interval_s: float, give_up_s: float
) -> list[SlowConnection]:
    """Open `count` connections, send `head` on each, then one byte of `drip` (cycled) every
    `interval_s` until the server closes the connection; a connection still open after
    `give_up_s` is closed here and left with `closed_after_s` None."""
    selector = selectors.DefaultSelector()
    conns = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head)
        sock.setblocking(False)
        conn = SlowConnection(sock, time.monotonic())
        selector.register(sock, selectors.EVENT_READ, conn)
        conns.append(conn)

    def closed(conn: SlowConnection) -> None:
        conn.closed_after_s = time.monotonic() - conn.opened
        selector.unregister(conn.sock)
        conn.sock.close()

    deadline = time.monotonic() + give_up_s
    sent = 0
    next_drip = time.monotonic()
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=interval_s):
            conn = key.data
            try:
                data = conn.sock.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if data:
                conn.answer += data
            else:
                closed(conn)
        if time.monotonic() >= next_drip:
            byte = drip[sent % len(drip) : sent % len(drip) + 1]
            sent += 1
            for key in list(selector.get_map().values()):
                try:
                    key.data.sock.send(byte)
                except OSError:
                    closed(key.data)
            next_drip += interval_s
    for key in list(selector.get_map().values()):
        selector.unregister(key.fileobj)
        key.data.sock.close()
    return conns


def serve_meanwhile(
    attack: Callable[[], list[SlowConnection]], call: Callable[[], bool]
) -> tuple[list[SlowConnection], list[bool]]:
    """Run `attack` in a thread and `call` (a good client's request: True when served) until it ends."""
    result: list[list[SlowConnection]] = []
    thread = threading.Thread(target=lambda: result.append(attack()), daemon=True)
    thread.start()
    served = []
    while thread.is_alive():
        served.append(call())
    thread.join()
    return result[0], served


HEADER_TRICKLE = b"POST /v1/tasks/add HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@pytest.mark.timeout(120)
def test_slow_header_clients_are_cut_off_and_a_good_client_is_served(stack: list[Any], tmp_path: Path) -> None:
    pod = task_pod(stack)
    gw = gateway(stack, [pod], tmp_path / "runs.db", "--header-timeout", "1")

    def good() -> bool:
        reply = gw.request("POST", "/v1/tasks/add", {"x": 1, "y": 2}, timeout=10)
        return reply.status == 200 and reply.json["result"] == 3

    slow, served = serve_meanwhile(lambda: trickle(gw.port, 50, HEADER_TRICKLE, b"abc", 0.1, 30.0), good)
    assert all(conn.closed_after_s is not None for conn in slow), "a slow client held its connection"
    assert all(conn.answer == b"" for conn in slow)  # cut off, not answered: no request ever arrived
    assert served and all(served), f"the good client was refused {served.count(False)} of {len(served)} times"


@pytest.mark.timeout(120)
def test_a_slow_body_is_408_and_the_run_is_never_accepted(stack: list[Any], tmp_path: Path) -> None:
    pod = task_pod(stack)
    gw = gateway(stack, [pod], tmp_path / "runs.db", "--body-timeout", "1")
    head = (
        "POST /v1/tasks/echo_text?wait=5 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n"
        '{"text": "'
    ).encode()

    def good() -> bool:
        reply = gw.request("POST", "/v1/tasks/add", {"x": 2, "y": 2}, timeout=10)
        return reply.status == 200 and reply.json["result"] == 4

    slow, served = serve_meanwhile(lambda: trickle(gw.port, 20, head, b"z", 0.1, 30.0), good)
    for conn in slow:
        assert conn.closed_after_s is not None, "a slow body held its connection"
        status, _, body = conn.answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408"), conn.answer[:200]
        assert json.loads(body)["error"]["type"] == "body_timeout"
    assert served and all(served)
    with sqlite3.connect(gw.db) as conn:  # no run was recorded for a body that never arrived
        assert conn.execute("SELECT count(*) FROM runs WHERE task = 'echo_text'").fetchone() == (0,)
    conn.close()


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _held_connection(port: int) -> http.client.HTTPConnection | None:
    """A keep-alive connection the gateway has taken (it answered a request on it), or None when it was refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/healthz")
    reply = conn.getresponse()
    reply.read()
    if reply.status == 200:
        return conn
    conn.close()
    return None


@pytest.mark.timeout(120)
def test_connections_over_the_cap_get_a_typed_503(stack: list[Any], tmp_path: Path) -> None:
    pod = task_pod(stack)
    gw = gateway(stack, [pod], tmp_path / "runs.db", "--max-connections", "5", "--header-timeout", "60")
    held: list[http.client.HTTPConnection] = []
    request = f"GET /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    try:
        for _ in range(20):  # a readiness probe's connection may still be closing: its slot frees soon
            if len(held) == 5:
                break
            if (conn := _held_connection(gw.port)) is not None:
                held.append(conn)
        assert len(held) == 5
        answer = _raw_request(gw.port, request.encode())
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in status, answer[:300]
        assert json.loads(body)["error"]["type"] == "too_many_connections"
    finally:
        for conn in held:
            conn.close()
    # Once those close, the gateway serves again.
    deadline = time.monotonic() + 20
    while not _raw_request(gw.port, request.encode()).startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline, "the gateway did not serve again after the idle connections closed"


# -- the model server ------------------------------------------------------------------------------


@pytest.fixture
def echo_model(stack: list[Any]) -> str:
    server = start_model_server(
        "model_server_app:app",
        "echo",
        "--max-body-bytes",
        "20000",
        "--max-elements",
        "1000",
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        app_dir=MODEL_TESTS,
        cwd=ROOT,
    )
    stack.append(server)
    return server.wait_ready()


def _post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.timeout(120)
def test_the_model_server_bounds_bodies_and_tensors_with_typed_errors(echo_model: str) -> None:
    v1, v2 = echo_model + "/v1/models/echo/predict", echo_model + "/v2/models/echo/infer"
    status, doc = _post(v1, json.dumps({"inputs": "x" * 30_000}).encode())
    assert status == 413 and doc["error"]["type"] == "payload_too_large", doc
    tensor = {"name": "x", "shape": [2000], "datatype": "INT32", "data": [1] * 2000}
    status, doc = _post(v2, json.dumps({"inputs": [tensor]}).encode())
    assert status == 413 and isinstance(doc["error"], str) and "--max-elements" in doc["error"], doc
    status, doc = _post(v2, json.dumps({"inputs": [{**tensor, "shape": [10**12], "data": [1]}]}).encode())
    assert status == 413 and isinstance(doc["error"], str), doc  # a shape's claim alone is enough
    status, doc = _post(v2, json.dumps({"inputs": ["x" * 30_000]}).encode())
    assert status == 413 and isinstance(doc["error"], str), doc  # the protocol's error shape
    # Within the limits, the server answers as ever.
    assert _post(v1, json.dumps({"inputs": 7}).encode()) == (200, {"outputs": 7})
    status, doc = _post(v2, json.dumps({"inputs": [{**tensor, "shape": [3], "data": [1, 2, 3]}]}).encode())
    assert status == 200 and doc["outputs"][0]["data"] == [1, 2, 3], doc


@pytest.mark.timeout(120)
def test_the_model_server_cuts_off_slow_clients_and_serves_a_good_one(echo_model: str) -> None:
    port = int(echo_model.rsplit(":", 1)[1])
    head = b"POST /v1/models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def good() -> bool:
        return _post(echo_model + "/v1/models/echo/predict", b'{"inputs": 1}') == (200, {"outputs": 1})

    slow, served = serve_meanwhile(lambda: trickle(port, 20, head, b"abc", 0.1, 30.0), good)
    assert all(conn.closed_after_s is not None for conn in slow), "a slow client held its connection"
    assert served and all(served)
    body_head = (
        b"POST /v1/models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    slow, served = serve_meanwhile(lambda: trickle(port, 10, body_head, b" ", 0.1, 30.0), good)
    for conn in slow:
        assert conn.closed_after_s is not None, "a slow body held its connection"
        status, _, body = conn.answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408") and json.loads(body)["error"]["type"] == "body_timeout"
    assert served and all(served)
