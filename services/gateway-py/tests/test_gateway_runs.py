"""Runs' decisions, unit-tested against a fake pool (no sockets) and a real store in a temp file:
where a run goes, when a refusal is a 429 and when it waits, retries, lost and drained pods,
cancels, and runs a previous gateway left unfinished."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from neutrino import _tracing
from neutrino_gateway import runs as runs_module
from neutrino_gateway.catalog import Catalog
from neutrino_gateway.errors import ApiError
from neutrino_gateway.run import Run
from neutrino_gateway.runs import Runs
from neutrino_gateway.store import RunStore
from neutrino_protocol import ErrorInfo, TaskRejected, TaskReply, payload


class FakePod:
    """What Runs uses of a pod.Pod: its address and state, ids, and what was sent to it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.up = True
        self.lost_reason = "stopped answering"
        self.in_flight: dict[int, Run] = {}
        self.sent: list[tuple[int, Run, bytes]] = []
        self.cancelled: list[int] = []
        self._ids = itertools.count(1)

    @property
    def usable(self) -> bool:
        return self.up

    def new_id(self) -> int:
        return next(self._ids)

    def submit(self, wire_id: int, run: Run, task: str, payload: bytes, *_options: Any) -> None:
        self.in_flight[wire_id] = run
        self.sent.append((wire_id, run, payload))

    def cancel(self, wire_id: int) -> None:
        self.cancelled.append(wire_id)


class FakePool:
    """What Runs uses of a pool.PodPool, plus what a real pod would report to its RunEvents."""

    def __init__(self, events: Any) -> None:
        self.events = events
        self.pods: dict[str, FakePod] = {}

    def usable(self) -> list[FakePod]:
        return [pod for pod in self.pods.values() if pod.usable]

    def any_usable(self) -> bool:
        return bool(self.usable())

    def choose(self, exclude: frozenset[str] = frozenset()) -> FakePod | None:
        pods = [pod for pod in self.usable() if pod.address not in exclude]
        return min(pods, key=lambda pod: len(pod.in_flight)) if pods else None  # ties: the first added

    def add(self, address: str) -> FakePod:
        pod = self.pods[address] = FakePod(address)
        return pod

    # -- as pod.Pod reports ------------------------------------------------------------------

    def where(self, run: Run) -> tuple[FakePod, int]:
        assert run.pod is not None and run.wire_id is not None, "the run is on no pod"
        return self.pods[run.pod], run.wire_id

    def reply(self, run: Run, status: str = "ok", attempts: int = 1, **fields: Any) -> None:
        pod, wire_id = self.where(run)
        self.events.on_reply(pod, pod.in_flight.pop(wire_id), TaskReply(wire_id, status, attempts, **fields))
        self.events.on_drained()

    def fail(self, run: Run, kind: str, attempts: int = 1) -> None:
        self.reply(run, "error", attempts, error=ErrorInfo(kind, "ValueError", "bad input", "Traceback ..."))

    def reject(self, run: Run, reason: str = "busy") -> None:
        pod, wire_id = self.where(run)
        self.events.on_rejected(pod, pod.in_flight.pop(wire_id), TaskRejected(wire_id, reason, f"{reason}!"))
        self.events.on_drained()

    def lose(self, pod: FakePod, reason: str = "stopped answering") -> None:
        pod.up, pod.lost_reason = False, reason
        lost = list(pod.in_flight.values())
        pod.in_flight.clear()
        self.events.on_pod_lost(pod, lost)

    def bring_up(self, pod: FakePod) -> None:
        pod.up = True
        self.events.on_pod_up(pod)


Scenario = Callable[[Runs, FakePool], Awaitable[None]]


def play(tmp_path: Path, scenario: Scenario, *pods: str, catalog: Catalog | None = None, max_active: int = 100) -> None:
    """Run `scenario` against Runs over a fresh store and a FakePool with `pods` (default: one)."""

    async def main() -> None:
        store = RunStore(tmp_path / "runs.db")
        runs = Runs(store, catalog or Catalog(), 60.0, FakePool, max_active)  # type: ignore[arg-type]
        pool: FakePool = runs.pool  # type: ignore[assignment]
        for address in pods or ("tcp://a:1",):
            pool.add(address)
        await runs.start()
        try:
            await scenario(runs, pool)
        finally:
            runs.close()
            store.close()

    asyncio.run(main())


async def submit(runs: Runs, retries: int | None = 0, key: str | None = None, **kwargs: Any) -> Run:
    """A run accepted and on disk (as a POST's answer finds it), not waited for any further."""
    run = runs.submit_nowait("add", kwargs or {"x": 1}, None, retries, key)
    if run.unwritten:
        await runs.store.commit()
    if run.write_error is not None:
        raise run.write_error
    return run


async def finished(runs: Runs, run: Run) -> Run:
    assert await runs.wait(run, 5.0), f"run is still {run.status}"
    return run


# -- accepting and sending -------------------------------------------------------------------


def test_a_run_is_on_disk_before_it_is_sent(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, x=1, y=[1, 2])
        ((wire_id, sent, packed),) = pool.pods["tcp://a:1"].sent
        assert sent is run and packed == payload.pack_args((), {"x": 1, "y": [1, 2]})
        assert (run.status, run.pod, run.wire_id, run.dispatches) == ("running", "tcp://a:1", wire_id, 1)
        stored = runs.store.get(run.id)
        assert stored is not None and stored.status == "queued" and stored.payload == packed

    play(tmp_path, scenario)


def test_a_run_without_a_callers_trace_starts_one_of_its_own(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        first, second = await submit(runs), await submit(runs)
        for run in (first, second):
            trace_id, _, flags = _tracing.parse(run.traceparent) or ("", "", -1)
            assert flags == 0 and trace_id not in run.id  # unsampled, its ids not the run id's bytes
        assert first.traceparent != second.traceparent

    play(tmp_path, scenario)


def test_a_run_submitted_without_waiting_is_sent_by_its_write_and_answered_after_it(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        sent = pool.pods["tcp://a:1"].sent
        await submit(runs)  # in flight: the next run's write waits for company
        run = runs.submit_nowait("add", {"x": 2}, None, 0, None)
        assert run.unwritten and len(sent) == 1 and runs.store.get(run.id) is None
        assert await runs.wait_for_post(run, 0) is False  # a 202 names a run on disk
        assert not run.unwritten and runs.store.get(run.id) is not None
        assert sent[-1][1] is run and run.status == "running"
        pool.reply(run)
        assert await runs.wait_for_post(run, 5.0) is True

    play(tmp_path, scenario)


def test_a_failed_first_write_is_the_posts_error_and_nothing_is_kept(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        sent = pool.pods["tcp://a:1"].sent
        await submit(runs)  # in flight: the next run's write is grouped, not made at once
        blocker = sqlite3.connect(runs.store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, held past the store's busy timeout
        try:
            run = runs.submit_nowait("add", {"x": 2}, None, 0, "k1")
            with pytest.raises(sqlite3.OperationalError):
                await runs.wait_for_post(run, 5.0)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert run.id not in runs.active and runs.by_idempotency_key("k1") is None
        assert len(sent) == 1 and not run.unwritten and runs.store.get(run.id) is None

    play(tmp_path, scenario)


def statements(store: RunStore) -> list[str]:
    """The writes `store` makes from now on, by their first words (`INSERT`, `UPDATE`, `DELETE`)."""
    seen: list[str] = []
    store._db.set_trace_callback(lambda sql: seen.append(sql.split(" (")[0].split(" SET")[0]))
    return seen


def test_a_sync_run_is_sent_at_once_and_written_once_with_its_outcome(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        writes = statements(runs.store)
        run = runs.submit_nowait("add", {"x": 2}, None, 0, None, write_first=False)
        ((_, sent, _),) = pool.pods["tcp://a:1"].sent  # sent before any write
        assert sent is run and not run.stored and runs.store.get(run.id) is None
        post = asyncio.ensure_future(runs.wait_for_post(run, 5.0))
        await asyncio.sleep(0)  # the POST is waiting
        pool.reply(run, payload=b"\x2a")
        assert await post is True
        stored = runs.store.get(run.id)
        assert stored is not None and (stored.status, stored.result, stored.attempts) == ("succeeded", b"\x2a", 1)
        assert stored.started_at == run.started_at and stored.traceparent == run.traceparent
        assert [sql for sql in writes if sql.startswith(("INSERT", "UPDATE", "DELETE"))] == ["INSERT INTO runs"]

    play(tmp_path, scenario)


def test_a_sync_run_whose_wait_ends_first_is_written_before_its_id_goes_out(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        writes = statements(runs.store)
        run = runs.submit_nowait("add", {"x": 2}, None, 0, None, write_first=False)
        assert await runs.wait_for_post(run, 0.01) is False  # the 202 names a run on disk
        stored = runs.store.get(run.id)
        assert stored is not None and stored.status == "running" and not run.unwritten
        pool.reply(run)
        assert await runs.wait_for_post(run, 5.0) is True
        assert runs.store.get(run.id).status == "succeeded"  # type: ignore[union-attr]
        assert [sql for sql in writes if sql.startswith(("INSERT", "UPDATE"))] == ["INSERT INTO runs", "UPDATE runs"]

    play(tmp_path, scenario)


def test_a_sync_run_refused_everywhere_is_a_429_and_writes_nothing(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        writes = statements(runs.store)
        run = runs.submit_nowait("add", {"x": 2}, None, 0, None, write_first=False)
        post = asyncio.ensure_future(runs.wait_for_post(run, 5.0))
        await asyncio.sleep(0)
        pool.reject(run, "busy")
        pool.reject(run, "busy")
        with pytest.raises(ApiError) as rejected:
            await post
        assert rejected.value.status == 429 and runs.get(run.id) is None
        assert not [sql for sql in writes if sql.startswith(("INSERT", "UPDATE", "DELETE"))]

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1")


def test_a_sync_run_after_a_failed_write_is_written_first(tmp_path: Path) -> None:
    """A store that cannot be written refuses new runs (503) rather than running them: a sync run
    too, once a write has failed, until one succeeds again."""

    async def scenario(runs: Runs, pool: FakePool) -> None:
        blocker = sqlite3.connect(runs.store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, held past the store's busy timeout
        try:
            with pytest.raises(sqlite3.OperationalError):  # a lone run is written at once
                runs.submit_nowait("add", {"x": 1}, None, 0, None)
            with pytest.raises(sqlite3.OperationalError):
                runs.submit_nowait("add", {"x": 2}, None, 0, None, write_first=False)
            assert not pool.pods["tcp://a:1"].sent and not runs.active
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await submit(runs)  # a write that succeeds
        run = runs.submit_nowait("add", {"x": 3}, None, 0, None, write_first=False)
        assert not run.stored

    play(tmp_path, scenario)


def test_no_usable_pod_is_503_and_a_full_gateway_is_429(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        await submit(runs)
        with pytest.raises(ApiError) as full:
            await submit(runs)
        assert full.value.status == 429
        pool.lose(pool.pods["tcp://a:1"])
        with pytest.raises(ApiError) as none:
            await submit(runs)
        assert none.value.status == 503

    play(tmp_path, scenario, max_active=1)


def test_an_integer_wider_than_64_bits_goes_as_a_float(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        await submit(runs, x=2**70)
        assert pool.pods["tcp://a:1"].sent[0][2] == payload.pack_args((), {"x": float(2**70)})
        with pytest.raises(ApiError) as refused:
            await submit(runs, x=10**400)
        assert refused.value.status == 422 and refused.value.detail[0]["loc"] == ["body", "x"]

    play(tmp_path, scenario)


# -- outcomes ----------------------------------------------------------------------------------


def test_an_outcome_is_told_only_once_it_is_written(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run, other = await submit(runs), await submit(runs)
        pool.reply(run, payload=b"\x2a")
        # Two runs in flight: the write waits for company, and nobody hears of the outcome before it.
        assert run.finishing and not run.finished and not run.done.is_set()
        await finished(runs, run)
        assert (run.status, run.result, run.attempts, run.pod) == ("succeeded", b"\x2a", 1, None)
        stored = runs.store.get(run.id)
        assert stored is not None and stored.status == "succeeded" and stored.result == b"\x2a"
        assert run.id not in runs.active and other.id in runs.active
        pool.reply(other)  # a None result comes with no payload
        assert (await finished(runs, other)).result == payload.NONE

    play(tmp_path, scenario)


def test_a_quiet_gateway_writes_an_outcome_when_the_batch_is_drained(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs)
        pool.reply(run)  # on_drained with one run in flight: written there and then
        assert not run.finishing and run.status == "succeeded" and run.done.is_set()

    play(tmp_path, scenario)


@pytest.mark.parametrize(
    ("kind", "status"), [("task_error", "failed"), ("cancelled", "cancelled"), ("bad_arguments", "failed")]
)
def test_a_task_error_ends_the_run_with_the_error(tmp_path: Path, kind: str, status: str) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs)
        pool.fail(run, kind, attempts=2)
        await finished(runs, run)
        assert (run.status, run.attempts) == (status, 2)
        assert run.error == {"kind": kind, "type": "ValueError", "message": "bad input", "traceback": "Traceback ..."}

    play(tmp_path, scenario)


def test_a_pod_shutting_down_sends_the_run_elsewhere(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs)
        pool.fail(run, "shutting_down", attempts=0)
        assert (run.pod, run.dispatches, run.attempts, run.status) == ("tcp://b:1", 2, 0, "running")
        pool.reply(run)
        assert (await finished(runs, run)).attempts == 1

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1")


def test_a_rejection_other_than_busy_fails_the_run(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs)
        pool.reject(run, "too_large")
        await finished(runs, run)
        assert run.status == "failed"
        assert run.error == {"kind": "too_large", "type": "RejectedError", "message": "too_large!"}
        assert len(pool.pods["tcp://b:1"].sent) == 0

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1")


# -- refusals: 429 or wait -------------------------------------------------------------------


def test_refused_everywhere_before_its_id_went_out_is_a_429_and_forgotten(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, key="k1")
        post = asyncio.ensure_future(runs.wait_for_post(run, 5.0))
        await asyncio.sleep(0)  # the POST is waiting
        pool.reject(run, "busy")
        assert run.pod == "tcp://b:1", "a busy pod's run goes to another one first"
        pool.reject(run, "draining")
        with pytest.raises(ApiError) as rejected:
            await post
        assert rejected.value.status == 429 and rejected.value.headers == {"Retry-After": "1"}
        # It never ran: no record, and its Idempotency-Key is free for the retry.
        assert runs.get(run.id) is None and runs.by_idempotency_key("k1") is None
        assert not run.seen and not run.finished

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1")


def test_refused_everywhere_after_its_id_went_out_waits_and_is_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs_module, "REQUEUE_DELAY_S", (0.01, 0.01))

    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, key="k1")
        assert await runs.wait_for_post(run, 0) is False  # 202: the caller has its id now
        assert run.seen
        again = asyncio.ensure_future(runs.wait_for_post(runs.by_idempotency_key("k1") or run, 5.0))
        await asyncio.sleep(0)  # a second POST with the key waits on it: still no 429
        pool.reject(run, "busy")
        pool.reject(run, "busy")
        assert (run.status, run.pod, run.requeues) == ("queued", None, 1)
        while run.pod is None:  # the backoff's timer sends it again
            await asyncio.sleep(0.005)
        assert run.dispatches == 3 and run.attempts == 0
        pool.reply(run)
        assert await again is True and run.status == "succeeded"

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1")


def test_a_refusal_after_the_run_ran_once_is_not_a_429(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, retries=1)
        post = asyncio.ensure_future(runs.wait_for_post(run, 5.0))
        await asyncio.sleep(0)
        pool.lose(pool.pods["tcp://a:1"])  # may have run there: attempts 1
        pool.bring_up(pool.pods["tcp://a:1"])
        pool.reject(run, "busy")
        pool.reject(run, "busy")
        assert not run.rejected and run.requeues == 1 and run.id in runs.active
        post.cancel()

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1")


# -- lost pods and retries ---------------------------------------------------------------------


def test_a_lost_pod_s_runs_are_sent_again_while_retries_allow(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, retries=1)
        pool.lose(pool.pods["tcp://a:1"])
        assert (run.pod, run.attempts, run.dispatches) == ("tcp://b:1", 1, 2)
        pool.lose(pool.pods["tcp://b:1"], "restarted")
        await finished(runs, run)
        assert run.status == "failed" and run.error is not None
        assert (run.error["kind"], run.error["type"]) == ("pod_lost", "RunLostError")
        assert run.error["message"].startswith("task pod tcp://b:1 restarted while the run was in flight")

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1")


def test_retries_default_to_the_task_s_option(tmp_path: Path) -> None:
    catalog = Catalog()
    catalog.update("tcp://a:1", {"add": {"params": {}, "options": {"retries": 1}}})

    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, retries=None)
        pool.lose(pool.pods["tcp://a:1"])
        assert run.pod == "tcp://b:1", "the task allows one retry"
        pool.lose(pool.pods["tcp://b:1"])
        assert (await finished(runs, run)).status == "failed"

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1", catalog=catalog)


def test_with_no_usable_pod_a_run_waits_for_one(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, retries=1)
        pod = pool.pods["tcp://a:1"]
        pool.lose(pod)
        assert (run.status, run.pod, run.attempts) == ("queued", None, 1)
        pool.bring_up(pod)
        assert (run.status, run.pod, run.dispatches) == ("running", "tcp://a:1", 2)

    play(tmp_path, scenario)


def test_a_wait_ends_at_its_timeout(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs)
        assert await runs.wait(run, 0.01) is False
        assert await runs.wait_for_post(run, 0.01) is False and run.http_waiting == 0

    play(tmp_path, scenario)


# -- cancels -------------------------------------------------------------------------------------


def test_a_cancel_of_a_run_waiting_in_the_gateway_ends_it_at_once(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, retries=1)
        pool.lose(pool.pods["tcp://a:1"])
        runs.cancel(run)
        await finished(runs, run)
        assert run.status == "cancelled" and run.error is not None and run.error["kind"] == "cancelled"
        pool.bring_up(pool.pods["tcp://a:1"])
        assert len(pool.pods["tcp://a:1"].sent) == 1, "a cancelled run is not sent again"

    play(tmp_path, scenario)


def test_a_cancel_goes_to_the_pod_and_is_never_undone(tmp_path: Path) -> None:
    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = await submit(runs, retries=3)
        runs.cancel(run)
        assert pool.pods["tcp://a:1"].cancelled == [run.wire_id]
        pool.lose(pool.pods["tcp://a:1"])  # before confirming the cancel: not re-sent despite retries
        await finished(runs, run)
        assert run.status == "cancelled" and pool.pods["tcp://b:1"].sent == []

    play(tmp_path, scenario, "tcp://a:1", "tcp://b:1")


# -- a previous gateway's runs ---------------------------------------------------------------


@pytest.mark.parametrize(("retries", "status"), [(0, "failed"), (1, "running")])
def test_runs_left_in_flight_are_resent_or_failed_once_recovered(tmp_path: Path, retries: int, status: str) -> None:
    def left_behind() -> str:
        async def before() -> str:
            store = RunStore(tmp_path / "runs.db")
            runs = Runs(store, Catalog(), 60.0, FakePool)  # type: ignore[arg-type]
            runs.pool.add("tcp://a:1")  # type: ignore[attr-defined]
            await runs.start()
            run = await submit(runs, retries=retries)
            runs.close()
            store.close()  # the gateway stops with the run in flight
            return run.id

        return asyncio.run(before())

    run_id = left_behind()

    async def scenario(runs: Runs, pool: FakePool) -> None:
        run = runs.get(run_id)
        assert run is not None and run is runs.active[run_id] and run.status == "queued"
        runs.recover()  # once the catalog is known
        if status == "failed":
            await finished(runs, run)
            assert run.error is not None and run.error["kind"] == "gateway_restarted"
        else:
            assert (run.status, run.attempts, run.dispatches) == ("running", 1, 2)

    play(tmp_path, scenario)
