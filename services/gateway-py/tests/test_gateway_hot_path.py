"""The per-run shortcuts give what the general code gives: SubmitTask frames from cached parts, the
JSON success answer spliced by hand, the packed empty arguments, a run's `done` with a time limit,
writes of one kind grouped into one executemany, one timer for every request's deadline, and
metrics counted in plain numbers until they are read."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from neutrino_gateway import bodies, metrics, pod
from neutrino_gateway.api import json_success
from neutrino_gateway.deadlines import Deadlines
from neutrino_gateway.run import Done, Run
from neutrino_gateway.store import _INSERT_FINISHED, _INSERT_FINISHED_LEAN, RunStore
from neutrino_protocol import SubmitTask, payload

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("wire_id", [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**40])
def test_submit_frames_are_the_bytes_submit_task_encodes(wire_id: int) -> None:
    options = itertools.product(
        ["noop", "a" * 40, "tâche"],
        [None, 0.5, 30.0, 1e-9],
        [None, 0, 3, 2**31],
        [None, TRACEPARENT],
        [None, "neutrino=0123abcd", "neutrino=ab,vendor=" + "x" * 300],
    )
    for task, timeout_s, retries, traceparent, tracestate in options:
        body = b"\x92\x90\x81\xa1x\x01"
        expected = SubmitTask(
            id=wire_id,
            task=task,
            timeout_s=timeout_s,
            retries=retries,
            traceparent=traceparent,
            tracestate=tracestate,
            payload=body,
        ).encode()
        got = pod.submit_frames(wire_id, task, timeout_s, retries, traceparent, tracestate, body)
        assert got == expected, (task, timeout_s, retries, traceparent, tracestate)


def test_submit_frames_past_the_cache_bound_are_still_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pod, "_encoders", {})
    monkeypatch.setattr(pod, "_ENCODERS_MAX", 2)
    for timeout_s in (1.0, 2.0, 3.0, 4.0):
        got = pod.submit_frames(7, "noop", timeout_s, None, TRACEPARENT, None, b"\xc0")
        assert (
            got == SubmitTask(id=7, task="noop", timeout_s=timeout_s, traceparent=TRACEPARENT, payload=b"\xc0").encode()
        )
    assert len(pod._encoders) == 2


@pytest.mark.parametrize(
    "result", [None, payload.NONE, b"", payload.pack_result(42), payload.pack_result({"a": [1, b"\x00", "é"]})]
)
@pytest.mark.parametrize("run_id", ["0193f2c4d5e67a8b9c0d1e2f3a4b5c6d", "old", 'a "quoted" é id'])
def test_the_json_success_answer_is_the_one_json_bytes_writes(result: bytes | None, run_id: str) -> None:
    value: Any = payload.unpack_result(result) if result else None
    whole = bodies.json_bytes({"id": run_id, "status": "succeeded", "result": value})
    assert json_success(run_id, result) == whole
    assert json.loads(whole)["id"] == run_id


def test_json_bytes_is_compact_json_with_bytes_as_base64() -> None:
    body = {"a": [1, 2.5, None, True], "b": b"\x00\xff", "c": "é"}
    assert bodies.json_bytes(body) == json.dumps({**body, "b": "AP8="}, separators=(",", ":")).encode()
    with pytest.raises(TypeError):
        bodies.json_bytes({"x": object()})


def test_no_arguments_pack_as_the_empty_call() -> None:
    assert bodies.pack_kwargs({}) == payload.pack_args((), {})


def test_done_wakes_its_waiters_or_lets_them_go_after_the_time_limit() -> None:
    async def main() -> None:
        done = Done()
        assert await done.wait(0.01) is False
        assert done._waiters == []  # a waiter that gave up is not kept
        waiters = [asyncio.ensure_future(done.wait(5.0)) for _ in range(3)]
        await asyncio.sleep(0)
        done.set()
        assert await asyncio.gather(*waiters) == [True, True, True]
        assert done.is_set() and await done.wait(5.0) is True
        # A cancelled waiter (a request past its deadline) leaves nothing behind.
        other = Done()
        task = asyncio.ensure_future(other.wait(5.0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert other._waiters == []

    asyncio.run(main())


def _run(run_id: str, now: float, timeout_s: float | None = None, retries: int | None = None, **fields: Any) -> Run:
    """A run of `add` created at `now`, kept for a minute."""
    return Run(
        id=run_id,
        task="add",
        payload=b"\x92\x90\x80",
        timeout_s=timeout_s,
        retries=retries,
        created_at=now,
        expires_at=now + 60,
        **fields,
    )


def test_grouped_writes_keep_their_order(tmp_path: Path) -> None:
    """Inserts and outcomes interleaved in one transaction: each run's outcome follows its insert."""
    store = RunStore(tmp_path / "runs.db")
    now = time.time()
    runs = [_run(f"r{i}", now) for i in range(6)]
    for run in runs[:3]:
        store.stage_insert(run)
    for run in runs[:2]:
        store.stage_finish(run, "succeeded", 1, b"\xc0", None, now, now + 60)
    store.stage_insert(runs[3])
    store.stage_delete(runs[0])
    for run in runs[4:]:
        store.stage_insert(run)
    assert store.flush() is None
    assert store.get("r0") is None
    assert [store.get(f"r{i}").status for i in range(1, 6)] == ["succeeded", "queued", "queued", "queued", "queued"]  # type: ignore[union-attr]
    store.close()


@pytest.mark.parametrize(
    ("timeout_s", "retries", "key", "error"),
    [
        (None, None, None, None),
        (2.5, None, None, None),
        (None, 0, None, None),
        (None, None, "k", None),
        (None, None, None, {"kind": "task_error", "type": "ValueError", "message": "no"}),
    ],
)
def test_a_sync_runs_row_written_with_its_outcome_is_whole_whichever_insert_writes_it(
    tmp_path: Path, timeout_s: float | None, retries: int | None, key: str | None, error: dict[str, Any] | None
) -> None:
    """The lean insert (no timeout, retries, key or error) leaves those columns NULL: the row reads
    back as the full insert's does, every column compared."""
    store = RunStore(tmp_path / "runs.db")
    now = time.time()
    run = _run("r1", now, timeout_s=timeout_s, retries=retries, idempotency_key=key)
    run.traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    run.started_at = now + 0.001
    run.stored = False
    status, result = ("failed", None) if error else ("succeeded", b"\x2a")
    store.stage_finish(run, status, 1, result, error, now + 0.002, now + 60)
    lean = timeout_s is None and retries is None and key is None and error is None
    assert store._staged[0][0] == (_INSERT_FINISHED_LEAN if lean else _INSERT_FINISHED)
    assert store.flush() is None
    row = store._db.execute("SELECT * FROM runs").fetchall()
    assert row == [
        (
            "r1",
            "add",
            b"\x92\x90\x80",
            timeout_s,
            retries,
            status,
            result,
            None if error is None else json.dumps(error),
            1,
            now,
            now + 0.001,
            now + 0.002,
            now + 60,
            key,
            run.traceparent,
        )
    ]
    store.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b'{"a": [1, 2.5, "\xc3\xa9"]}',
        "\ufeff{}".encode(),
        "{}".encode("utf-16"),
        '{"x": 1}'.encode("utf-32-le"),
        b"{",
        b"",
        b"\xff{}",
        b'{"a": NaN}',
        b"[1]",
    ],
)
def test_json_bodies_read_as_json_loads_reads_them(raw: bytes) -> None:
    """bodies._json_loads takes UTF-8 the short way: the same value, or the same error, as json.loads."""
    try:
        expected: Any = json.loads(raw)
    except ValueError as exc:
        with pytest.raises(type(exc)) as caught:
            bodies._json_loads(raw)
        assert str(caught.value) == str(exc)
        return
    assert bodies._json_loads(raw) == expected


class _Sink:
    """The pod's RunEvents and CatalogEvents, hearing nothing of interest here."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


def test_a_pod_sends_a_turns_runs_at_its_end_and_not_those_handed_back_meanwhile() -> None:
    import zmq
    from neutrino_protocol import decode

    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    async def main() -> list[Any]:
        link = pod.Pod(f"tcp://127.0.0.1:{port}", ctx, _Sink(), _Sink(), 60.0, 60.0)
        link.start()
        try:
            for wire_id in (1, 2, 3):
                link.submit(wire_id, object(), "noop", b"\x92\x90\x80", None, None, TRACEPARENT, None)
            del link.in_flight[2]  # handed back before the turn ended (as a lost pod's runs are)
            await asyncio.sleep(0)  # the end of the turn: the sends
            received = []
            while len(received) < 3:  # the first ping and two runs
                assert router.poll(5000), f"only {received} arrived"
                received.append(decode(router.recv_multipart()[1:]))
            assert not router.poll(100)
            return received
        finally:
            link.close()

    try:
        messages = asyncio.run(main())
    finally:
        router.close(linger=0)
        ctx.term()
    submitted = [m for m in messages if isinstance(m, SubmitTask)]
    assert sorted(type(m).__name__ for m in messages) == ["Ping", "SubmitTask", "SubmitTask"]
    assert [m.id for m in submitted] == [1, 3]
    assert submitted[0].traceparent == TRACEPARENT and submitted[0].payload == b"\x92\x90\x80"


def test_deadlines_cancel_only_the_requests_past_theirs_and_say_so() -> None:
    """Deadlines: one timer for every request in flight, asyncio.timeout's outcome for each."""

    async def request(deadlines: Deadlines, sleep_s: float) -> str:
        task = deadlines.start()
        try:
            await asyncio.sleep(sleep_s)
            return "answered"
        except asyncio.CancelledError:
            if not deadlines.passed(task):
                raise
            return "deadline"
        finally:
            deadlines.end(task)

    async def main() -> None:
        deadlines = Deadlines(0.05)
        quick, slow = request(deadlines, 0.0), request(deadlines, 5.0)
        started = time.monotonic()
        assert await asyncio.gather(quick, slow) == ["answered", "deadline"]
        assert 0.04 < time.monotonic() - started < 2.0
        # Requests started later are timed from their own start, by the same timer.
        first = asyncio.ensure_future(request(deadlines, 5.0))
        await asyncio.sleep(0.03)
        second = asyncio.ensure_future(request(deadlines, 5.0))
        assert await first == "deadline"
        assert not second.done()  # 0.03 s younger: not past its deadline yet
        assert await second == "deadline"
        # A cancel from elsewhere is not a deadline: it stays a cancel.
        other = asyncio.ensure_future(request(deadlines, 5.0))
        await asyncio.sleep(0)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        assert deadlines._running == {} and deadlines._expired == set()

    asyncio.run(main())


def test_metrics_counted_per_run_read_as_prometheus_observed_them() -> None:
    """observe_request / run_finished add to plain numbers; any read of the registry publishes them:
    the samples are those Counter.inc and Histogram.observe would have made."""
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

    reference = CollectorRegistry()
    requests = Counter("ref_requests_total", "", ["route", "code"], registry=reference)
    latency = Histogram("ref_request_seconds", "", ["route"], buckets=metrics.TIME_BUCKETS_S, registry=reference)
    route = "/test/hot-path/{name}"
    seconds = [0.0, 1e-6, 2e-6, 0.00025, 0.0003, 0.001, 59.9, 60.0, 61.0, 1e9]
    for value in seconds:
        metrics.observe_request(route, 200, value)
        requests.labels(route, "200").inc()
        latency.labels(route).observe(value)

    def samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (sample.name.removeprefix(prefix), tuple(sorted(sample.labels.items()))): sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.labels.get("route") == route and not sample.name.endswith("_created")
        }

    ours = samples(REGISTRY, "neutrino_gateway_")
    assert ours == samples(reference, "ref_") and ours
    metrics.observe_request(route, 200, 0.5)  # counted again after a read: the next read adds it
    assert samples(REGISTRY, "neutrino_gateway_")[("requests_total", (("code", "200"), ("route", route)))] == 11


def test_the_shortcut_takes_known_names_past_the_router_and_leaves_the_rest_to_it() -> None:
    """`api.shortcut` against a real aiohttp app and server: a POST for a name it takes reaches the
    handler with the route's match info and without the router or the app's middleware; every
    other request goes the usual way. It also pins the aiohttp internal it relies on: the
    AppRunner's server calls the application's `_handle`."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from neutrino_gateway.shortcut import shortcut

    seen: list[tuple[str, str]] = []

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(("middleware", request.path))
        return await handler(request)

    async def routed(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"routed {request.match_info['name']}")

    async def direct(request: web.Request) -> web.StreamResponse:
        route = request.match_info.route
        assert route.method == "POST" and route.resource is not None
        seen.append(("direct", route.resource.canonical))
        return web.Response(text=f"direct {request.match_info['name']} {request.app is app}")

    app = web.Application(middlewares=[middleware])
    app.router.add_post("/v1/tasks/{name}", routed)
    resolved: list[str] = []
    resolve = app.router.resolve

    async def counting_resolve(request: web.Request) -> Any:
        resolved.append(request.path)
        return await resolve(request)

    app.router.resolve = counting_resolve  # type: ignore[method-assign]
    shortcut(app, "POST", "/v1/tasks/", {"add"}.__contains__, direct)

    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            reply = await client.post("/v1/tasks/add", data=b"{}")
            assert (reply.status, await reply.text()) == (200, "direct add True")
            assert seen == [("direct", "/v1/tasks/{name}")] and resolved == []
            for method, path, headers, status in [
                ("POST", "/v1/tasks/other", {}, 200),  # a name it does not take
                ("POST", "/v1/tasks/add", {"Expect": "100-continue"}, 200),
                ("GET", "/v1/tasks/add", {}, 405),
                ("POST", "/v1/tasks/add/", {}, 404),
            ]:
                seen.clear()
                reply = await client.request(method, path, data=b"{}", headers=headers)
                assert reply.status == status, (method, path)
                assert ("direct", "/v1/tasks/{name}") not in seen and path in resolved, (method, path)
            assert await (await client.post("/v1/tasks/other")).text() == "routed other"

    asyncio.run(main())
