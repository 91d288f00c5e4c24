"""Runs from acceptance to outcome: record, dispatch to a task pod, re-dispatch, finish, cancel, recover.

The rules, in one place:
- A run is written to the store before its id is answered (`wait_for_post` waits for it). One
  whose id may go out before its outcome (`?wait=0`, an Idempotency-Key) is written before it is
  sent anywhere (`submit_nowait` returns at once and the write's callback sends it). A sync POST's
  run without a key is sent at once and written once, with its outcome, unless its wait ends
  first (then it is written before the 202), or the store's last write failed (then it is refused
  like any other, not run). Until then only its caller, who has no id, knows of it: a gateway
  that dies meanwhile answers that caller with a broken connection, as it would before the first
  write, and such a run is not recovered. That is a sync call's contract (an HTTP request to any
  server), and it spares each sync run one of its two writes.
- A pod's `busy`/`draining` rejection, or a `shutting_down` answer (the run never started), sends
  the run to another pod; that spends no attempt. When every usable pod refused: a caller still
  waiting for the first answer gets 429 and the run is forgotten (it never ran, so the
  Idempotency-Key is free again); a run already answered 202 waits in the gateway and is tried
  again with backoff.
- A pod that stops answering (pod.py) hands back its runs: each is sent elsewhere if its retries
  allow (`retries` per call, else the task's default), else it fails with `pod_lost`.
- At start-up, runs a previous gateway left queued or running are treated the same way
  (`gateway_restarted`): re-sent when retries allow, else failed with a reason that says the
  outcome is unknown.
- A cancel is never undone: a run asked to stop is not sent anywhere again (its pod lost,
  drained or refused it first); it ends `cancelled`.
- Every outcome is written before anyone waiting on the run is told.

`Run` (run.py) is the record and store.py persists it; `Runs` owns its lifecycle: it makes the
task pods (pool.py) at construction and is the sink of what they report (pod.RunEvents).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from neutrino import _tracing
from neutrino_protocol import TaskRejected, TaskReply, payload

from . import metrics, tracing
from .bodies import pack_kwargs
from .catalog import Catalog
from .errors import busy, unavailable
from .pod import Pod, RunEvents
from .pool import PodPool
from .run import Run
from .store import RunStore

log = logging.getLogger("neutrino.gateway")

REQUEUE_DELAY_S = (0.05, 2.0)  # backoff for runs every pod refused: first delay, cap
# Group commit: with other runs in flight, writes wait up to this long for company. Each SQLite
# transaction costs ~60 µs of the gateway's one core; at 5,000 runs/s a 1 ms window shares each
# among ~5 runs, for 1 ms more latency under load (when runs already queue for milliseconds).
# A lone run is written at once.
GROUP_COMMIT_S = 0.001
EXPIRE_EVERY_S = 60.0


class Runs:
    """The runs in flight and what happens to them; `pods(self)` makes the task pods, which report here."""

    def __init__(
        self,
        store: RunStore,
        catalog: Catalog,
        run_ttl_s: float,
        pods: Callable[[RunEvents], PodPool],
        max_active: int = 100_000,
    ) -> None:
        self.store = store
        self.max_active = max_active
        self.catalog = catalog
        self.run_ttl_s = run_ttl_s
        self.active: dict[str, Run] = {}  # runs not finished yet
        self.keys: dict[str, Run] = {}  # Idempotency-Key -> run, for runs not finished yet
        self._waiting_for_pod: list[Run] = []  # refused everywhere, or no pod usable
        self._cancelling: set[str] = set()  # runs asked to stop while on a pod: never sent anywhere again
        self._recovered: list[Run] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expirer: asyncio.Task[None] | None = None
        self.pool = pods(self)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._recovered = list(self.store.unfinished())
        for run in self._recovered:  # one object per run from now on: GET, DELETE and recover() share it
            self.active[run.id] = run
            if run.idempotency_key is not None:
                self.keys[run.idempotency_key] = run
        if self._recovered:
            log.warning(
                "%d runs were in flight when the gateway stopped; they are re-sent or failed once a task pod answers",
                len(self._recovered),
            )
        self._expirer = self._loop.create_task(self._expire_loop(), name="expire runs")

    def close(self) -> None:
        if self._expirer is not None:
            self._expirer.cancel()

    # -- the API's entry points -------------------------------------------------------------

    def submit_nowait(
        self,
        task: str,
        kwargs: dict[str, Any],
        timeout_s: float | None,
        retries: int | None,
        idempotency_key: str | None,
        trace: tuple[str, str | None] | None = None,
        write_first: bool = True,
    ) -> Run:
        """Record a run and send it once it is on disk, by the write's callback (no wake-up of the
        caller in between). Until then `run.unwritten`; a write that fails forgets the run, sets
        `run.write_error` and its `done` (wait_for_post raises it). With `write_first` false (a
        sync POST without a key, see the top) it is sent at once and written with its outcome.
        Raises ApiError 503 when no task pod is usable, 429 when the gateway holds too many runs.
        `trace`: the run's W3C `(traceparent, tracestate)` (tracing.run_context); a new trace
        without one."""
        assert write_first or idempotency_key is None, "a keyed run is found by its key: it is written first"
        if not self.pool.any_usable():
            raise unavailable("no task pod is reachable; check that the orchestrators are running")
        if len(self.active) >= self.max_active:
            # Every unfinished run is held in memory (and those the pods refused wait here): a bound.
            raise busy(1)
        now = time.time()
        # One draw of random bytes for the run id and, when the run starts a trace, the trace's ids.
        random = os.urandom(16 if trace is not None else 40)
        run = Run(
            id=new_run_id(random[:16]),
            task=task,
            payload=pack_kwargs(kwargs),
            timeout_s=timeout_s,
            retries=retries,
            created_at=now,
            expires_at=now + self.run_ttl_s,
            idempotency_key=idempotency_key,
        )
        run.traceparent, tracestate = trace or (_tracing.new_traceparent(ids=random[16:]), None)
        run.tracestate = tracing.with_run(tracestate, run.id)
        tracing.run_created(run)
        # Registered before the write, so a second request with the same key in the meantime finds it.
        self.active[run.id] = run
        if idempotency_key is not None:
            self.keys[idempotency_key] = run
        if not write_first and not self.store.failing:  # a failing store refuses runs first (a 503)
            run.stored = False
            metrics.run_accepted(run.task)
            self._dispatch(run)
            return run
        run.unwritten = True
        self.store.stage_insert(run)

        def written(error: BaseException | None) -> None:
            run.unwritten = False
            if error is not None:  # nothing was accepted: whoever waits on the run hears the error
                self._forget(run)
                run.write_error = error
                run.done.set()
                return
            metrics.run_accepted(run.task)
            if not (run.finished or run.finishing):
                self._dispatch(run)

        self.store.after_commit(written)
        if len(self.active) == 1:
            # Nothing else in flight to share a transaction with: write now.
            if (error := self.store.flush()) is not None:
                raise error
        else:
            self.store.flush_soon(GROUP_COMMIT_S)
        return run

    def get(self, run_id: str) -> Run | None:
        return self.active.get(run_id) or self.store.get(run_id)

    def by_idempotency_key(self, key: str) -> Run | None:
        run = self.keys.get(key)
        if run is not None:
            return run
        run = self.store.by_idempotency_key(key)
        return None if run is None else self.active.get(run.id, run)

    def _forget(self, run: Run) -> None:
        self.active.pop(run.id, None)
        self._cancelling.discard(run.id)
        if run.idempotency_key is not None and self.keys.get(run.idempotency_key) is run:
            del self.keys[run.idempotency_key]

    async def wait(self, run: Run, wait_s: float) -> bool:
        """Wait up to `wait_s` for `run` to finish; True when it has."""
        if run.finished or wait_s <= 0:
            return run.finished
        await run.done.wait(wait_s)
        return run.finished

    async def wait_for_post(self, run: Run, wait_s: float) -> bool:
        """Wait up to `wait_s` for `run` on behalf of a POST that submitted it (or found it by its
        Idempotency-Key); True when it has finished. Raises the 429 when every pod refused the run
        before its id went out (`_all_refused`); otherwise the POST's answer carries the id from
        now on, so the run is never forgotten that way again."""
        waiting = wait_s > 0
        run.http_waiting += waiting
        try:
            if waiting and not run.finished:  # Runs.wait, without its coroutine on every POST
                await run.done.wait(wait_s)
            finished = run.finished
            if not run.stored and not run.rejected:
                # A sync run whose wait ended first: the 202 names a run on disk. It is in flight
                # already, so this write is kept until made (as an outcome is), and its outcome's
                # update follows it.
                run.stored = True
                self.store.stage_insert(run, keep=True)
                await self.store.commit(GROUP_COMMIT_S)
            elif run.unwritten:  # the answer names a run that is on disk
                await self.store.commit(GROUP_COMMIT_S)
        finally:
            run.http_waiting -= waiting
        if run.write_error is not None:
            raise run.write_error
        if run.rejected:
            raise busy(1)
        run.seen = True
        return finished

    def cancel(self, run: Run) -> None:
        """Ask for `run` to stop: dropped when it waits in the gateway, else its pod interrupts it."""
        if run.finished or run.finishing:
            return
        if run in self._waiting_for_pod or run.pod is None:
            if run in self._waiting_for_pod:
                self._waiting_for_pod.remove(run)
            self._finish(run, "cancelled", error=_error("cancelled", "TaskCancelledError", "cancelled before it ran"))
            return
        self._cancelling.add(run.id)
        pod = self.pool.pods.get(run.pod)
        if pod is not None and run.wire_id is not None:
            pod.cancel(run.wire_id)

    async def delete(self, run: Run) -> None:
        """Remove a finished run's record (DELETE /v1/runs/{id}); its Idempotency-Key is free after."""
        assert run.finished
        self._forget(run)
        self.store.stage_delete(run)
        await self.store.commit()

    # -- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, run: Run, exclude: frozenset[str] = frozenset()) -> None:
        if run.id in self._cancelling:
            # Asked to stop, and its pod lost it, drained or refused it before saying so: a cancel
            # is never undone by sending the run again (as a revoked Celery task is not re-run).
            message = "cancelled; its task pod lost the run before confirming the cancel, so it was not sent again"
            self._finish(run, "cancelled", error=_error("cancelled", "TaskCancelledError", message))
            return
        pod = self.pool.choose(exclude)
        if pod is None:
            if exclude and self.pool.usable():
                self._all_refused(run)
            else:
                run.pod, run.wire_id, run.status = None, None, "queued"
                self._waiting_for_pod.append(run)
            return
        # Where the run is goes down first: the pod's socket is read right after sends, so the run's
        # answer (or a refusal) may be handled as soon as submit() returns.
        run.pod, run.wire_id = pod.address, pod.new_id()
        run.dispatches += 1
        run.status = "running"
        if run.started_at is None:
            run.started_at = time.time()
        run.tried = exclude | {pod.address}
        tracing.sent(run)
        pod.submit(run.wire_id, run, run.task, run.payload, run.timeout_s, run.retries, run.traceparent, run.tracestate)

    def _all_refused(self, run: Run) -> None:
        if run.attempts == 0 and run.http_waiting and not run.seen:
            # The caller is still waiting for its first answer and nothing ran: tell it to come back.
            run.rejected = True
            self._forget(run)
            metrics.RUNS_REJECTED.labels(run.task).inc()
            if not run.stored:  # nothing on disk to take back
                run.done.set()
                return
            self.store.stage_delete(run)
            self.store.after_commit(lambda _error: run.done.set())
            self.store.flush_soon()
            return
        run.pod, run.wire_id, run.status = None, None, "queued"
        run.requeues += 1
        delay = min(REQUEUE_DELAY_S[1], REQUEUE_DELAY_S[0] * 2 ** (run.requeues - 1))
        assert self._loop is not None
        self._loop.call_later(delay, self._redispatch, run)

    def _redispatch(self, run: Run) -> None:
        if not (run.finished or run.finishing) and run.id in self.active:
            self._dispatch(run)

    def _retries_left(self, run: Run) -> bool:
        retries = run.retries
        if retries is None:
            info = self.catalog.get(run.task)
            retries = int(info.options.get("retries", 0)) if info is not None else 0
        return run.dispatches <= retries

    # -- what the pods say ------------------------------------------------------------------

    def on_reply(self, pod: Pod, run: Run, reply: TaskReply) -> None:
        tracing.replied(run, reply)
        if reply.status == "ok":
            self._finish(run, "succeeded", attempts=reply.attempts, result=reply.payload or payload.NONE)
            return
        error = reply.error
        kind = error.kind if error is not None else "task_error"
        if kind == "shutting_down":
            # The pod drained before the run started: it never ran; send it elsewhere.
            run.attempts += reply.attempts
            self._dispatch(run, exclude=frozenset({pod.address}))
            return
        status = "cancelled" if kind == "cancelled" else "failed"
        self._finish(
            run,
            status,
            attempts=reply.attempts,
            error=_error(
                kind,
                error.ename if error else kind,
                error.evalue if error else "",
                error.traceback if error else None,
            ),
        )

    def on_rejected(self, pod: Pod, run: Run, rejected: TaskRejected) -> None:
        if rejected.reason in ("busy", "draining"):
            self._dispatch(run, exclude=run.tried | {pod.address})
        else:
            self._finish(run, "failed", error=_error(rejected.reason, "RejectedError", rejected.message))

    def on_drained(self) -> None:
        """After a batch of pod answers: a quiet gateway writes their outcomes now, a busy one within the window."""
        if len(self.active) <= 1:
            self.store.flush()

    def on_pod_up(self, pod: Pod) -> None:
        waiting, self._waiting_for_pod = self._waiting_for_pod, []
        for run in waiting:
            if not (run.finished or run.finishing):
                self._dispatch(run)

    def on_pod_lost(self, pod: Pod, runs: list[Run]) -> None:
        for run in runs:
            self._lost(run, "pod_lost", f"task pod {pod.address} {pod.lost_reason} while the run was in flight")

    def recover(self) -> None:
        """Deal with the runs a previous gateway left unfinished (once the catalog is known)."""
        recovered, self._recovered = self._recovered, []
        for run in recovered:
            if run.finished or run.finishing:
                continue  # cancelled meanwhile
            run.dispatches = 1  # it was (or may have been) sent once already
            self._lost(run, "gateway_restarted", "the gateway restarted while the run was in flight")

    def _lost(self, run: Run, kind: str, what: str) -> None:
        if self._retries_left(run):
            log.info("run %s (%s): %s; sending it again", run.id, run.task, what, extra=log_fields(run))
            run.attempts += 1
            self._dispatch(run)
        else:
            self._finish(
                run,
                "failed",
                error=_error(
                    kind,
                    "RunLostError",
                    f"{what}; it may or may not have run. The task allows no more retries: "
                    "resubmit it if running it twice is safe, or give it retries",
                ),
            )

    # -- outcomes ---------------------------------------------------------------------------

    def _finish(
        self,
        run: Run,
        status: str,
        *,
        attempts: int = 0,
        result: bytes | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        if run.finished or run.finishing:
            return
        # The outcome goes to the store first and onto `run` once it is on disk: until then GET
        # shows the run unfinished and no waiter is told, so a write that fails (a full disk) and
        # is never made cannot leave a caller with an outcome the next gateway does not know.
        run.finishing = True
        finished_at = time.time()
        expires_at = finished_at + self.run_ttl_s
        attempts += run.attempts
        first_write = not run.stored  # a sync run's row comes with its outcome (see the top)
        self.store.stage_finish(run, status, attempts, result, error, finished_at, expires_at)
        if first_write:
            run.stored = run.unwritten = True  # a 202 that names it waits for this write
        outcome = metrics.OK if status == "succeeded" else (error or {}).get("kind", status)
        metrics.run_finished(run.task, outcome, finished_at - run.created_at)
        if log.isEnabledFor(logging.DEBUG):  # its fields cost more than the line's level check
            log.debug("run %s (%s) finished: %s", run.id, run.task, outcome, extra=log_fields(run))

        def written(failure: BaseException | None) -> None:
            if failure is not None:
                if not run.finish_failed:
                    log.error(
                        "run %s finished (%s); writing it failed, trying again: %s",
                        run.id,
                        status,
                        failure,
                        extra=log_fields(run),
                    )
                run.finish_failed = True
                self.store.after_commit(written)  # the store keeps the update staged and retries it
                return
            run.status, run.attempts, run.result, run.error = status, attempts, result, error
            run.finished_at, run.expires_at = finished_at, expires_at
            run.pod, run.wire_id, run.finishing, run.unwritten = None, None, False, False
            self._forget(run)
            run.done.set()

        self.store.after_commit(written)
        self.store.flush_soon(GROUP_COMMIT_S if len(self.active) > 1 else 0.0)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            try:
                removed = self.store.expire()
            except Exception:
                log.exception("expiring old runs failed")
                continue
            if removed:
                log.info("expired %d finished runs past their TTL", removed)


def new_run_id(random: bytes | None = None) -> str:
    """A UUIDv7 (RFC 9562) in hex: 48 bits of Unix milliseconds, then 74 random bits (unguessable,
    as run ids must be: they are the key to a run's result). Time-ordered, so the runs table's
    primary-key index grows at its end and a commit writes its last pages, not one random page per
    run as with a UUIDv4: about a third less SQLite CPU per run once the table holds 60,000 runs.
    `random`: 16 bytes from os.urandom (drawn here without it)."""
    raw = bytearray(os.urandom(16) if random is None else random)
    raw[:6] = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw[6] = 0x70 | raw[6] & 0x0F  # version 7
    raw[8] = 0x80 | raw[8] & 0x3F  # variant 10 (RFC 9562)
    return raw.hex()


def log_fields(run: Run) -> dict[str, Any]:
    """The fields a log line about `run` carries (`--log-format json`): its ids and its trace's."""
    return {"run_id": run.id, "task": run.task, **_tracing.fields(run.traceparent)}


def _error(kind: str, type_: str, message: str, traceback: str | None = None) -> dict[str, Any]:
    error = {"kind": kind, "type": type_, "message": message}
    if traceback:
        error["traceback"] = traceback
    return error
