"""Runs through the gateway's HTTP API, as a careful client makes them, and the books kept on them.

`submit` POSTs one `infer` run with an Idempotency-Key and, when the connection breaks or the
gateway answers 5xx without a run id (it was killed, it is restarting), asks again with the same
key until it has an answer it can act on: the run's id (2xx, or a task failure that names it), or
a 429/503 that says nothing ran. `settle` then polls `GET /v1/runs/{id}` until every accepted run
is in a terminal state. `Ledger` keeps every submission and what the gateway said about it, and
`audit` checks the promise: each accepted run ends in exactly one terminal state, answered once.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TERMINAL = ("succeeded", "failed", "cancelled")
RESUBMIT_PAUSE_S = (0.05, 1.0)  # after a broken connection: first pause, cap (the gateway may be restarting)


@dataclass
class Submission:
    token: str
    x: int
    sent_at: float  # seconds since the benchmark's start
    retries: int | None = None
    run_id: str | None = None
    http_status: int | None = None  # the answer acted on
    latency_s: float | None = None  # from the first try to the answer acted on
    first: dict[str, Any] | None = None  # the first terminal record seen (from the POST or a GET)
    final: dict[str, Any] | None = None  # the record when settled
    tries: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    rejected: str | None = None  # why nothing ran (429, 503, gave up)
    cancel: dict[str, Any] | None = None  # a cancel sent after acceptance: what it answered


@dataclass
class Ledger:
    submissions: list[Submission] = field(default_factory=list)

    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.run_id is not None]


async def submit(
    session: aiohttp.ClientSession,
    url: str,
    sub: Submission,
    *,
    wait_s: float,
    sleep_s: float = 0.0,
    give_up_s: float = 60.0,
) -> None:
    """POST `infer` for `sub` until the gateway answers something a client can act on."""
    query = f"wait={wait_s:g}" + (f"&retries={sub.retries}" if sub.retries is not None else "")
    body = {"token": sub.token, "x": sub.x}
    if sleep_s:
        body["sleep_s"] = sleep_s
    headers = {"Idempotency-Key": sub.token}
    deadline = time.monotonic() + give_up_s
    first_try = time.perf_counter()
    pause = RESUBMIT_PAUSE_S[0]
    while True:
        sub.tries += 1
        try:
            async with session.post(f"{url}/v1/tasks/infer?{query}", json=body, headers=headers) as resp:
                status, raw = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            sub.transport_errors[type(exc).__name__] += 1
            status, raw = None, b""
        doc = _json(raw)
        run_id = _run_id(status, doc)
        if run_id is not None:
            sub.run_id, sub.http_status = run_id, status
            sub.latency_s = time.perf_counter() - first_try
            if status == 200 or (doc.get("error") and status not in (202,)):
                sub.first = _as_record(status, doc)
            return
        if status is not None and 400 <= status < 500:
            # 429: every pod busy, nothing ran (the key is free again); a client would come back later,
            # here it is counted. Any other 4xx is this client's mistake: no point asking again.
            sub.http_status, sub.rejected = status, str(doc.get("error", {}).get("type", status))
            return
        # No answer, or a 5xx without a run id (503 while no pod is usable or the gateway is starting):
        # ask again with the same key after a pause.
        if time.monotonic() > deadline:
            sub.http_status, sub.rejected = status, f"gave up after {give_up_s:g}s ({status})"
            return
        await asyncio.sleep(pause)
        pause = min(RESUBMIT_PAUSE_S[1], pause * 2)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _run_id(status: int | None, doc: dict[str, Any]) -> str | None:
    """The run id in an answer: a 200/202 carries `id`, a task failure `error.detail.run_id`."""
    if status in (200, 202) and isinstance(doc.get("id"), str):
        return str(doc["id"])
    detail = doc.get("error", {}).get("detail") if isinstance(doc.get("error"), dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("run_id"), str):
        return str(detail["run_id"])
    return None


def _as_record(status: int | None, doc: dict[str, Any]) -> dict[str, Any]:
    """The POST's answer in the shape of a GET /v1/runs record, to compare with the settled one."""
    if status == 200:
        return {"status": doc.get("status"), "result": doc.get("result")}
    error = doc["error"]
    kind = error.get("detail", {}).get("kind")
    status_ = "cancelled" if status == 409 and error.get("type") == "TaskCancelledError" else "failed"
    return {"status": status_, "error": {"kind": kind, "type": error.get("type")}}


async def cancel(session: aiohttp.ClientSession, url: str, sub: Submission, give_up_s: float = 30.0) -> None:
    """Cancel an accepted run (POST /v1/runs/{id}/cancel), asking again while the gateway is unreachable;
    keeps what it answered."""
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            async with session.post(f"{url}/v1/runs/{sub.run_id}/cancel") as resp:
                doc = _json(await resp.read())
                sub.cancel = {"http": resp.status, "status": doc.get("status")}
                if resp.status in (200, 202):
                    if resp.status == 200 and doc.get("status") in TERMINAL and sub.first is None:
                        sub.first = doc
                    return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            sub.cancel = {"error": type(exc).__name__}
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


async def settle(session: aiohttp.ClientSession, url: str, subs: list[Submission], bound_s: float) -> None:
    """Poll each accepted run until it is terminal, all within `bound_s`; then read each once more."""
    deadline = time.monotonic() + bound_s
    semaphore = asyncio.Semaphore(32)

    async def one(sub: Submission) -> None:
        async with semaphore:
            while True:
                left = deadline - time.monotonic()
                record = await get_run(session, url, sub.run_id or "", wait_s=max(0.0, min(10.0, left)))
                if record is not None and record.get("status") in TERMINAL:
                    if sub.first is None:
                        sub.first = record
                    sub.final = record
                    return
                if left <= 0:
                    sub.final = record
                    return
                if record is None:
                    await asyncio.sleep(0.1)  # the gateway is restarting: ask again shortly

    await asyncio.gather(*(one(s) for s in subs if s.run_id is not None))
    # Terminal means final: read every run again and compare.
    for sub in subs:
        if sub.run_id is not None and sub.final is not None and sub.final.get("status") in TERMINAL:
            sub.final = await get_run(session, url, sub.run_id, wait_s=0) or sub.final


async def get_run(session: aiohttp.ClientSession, url: str, run_id: str, wait_s: float) -> dict[str, Any] | None:
    try:
        async with session.get(f"{url}/v1/runs/{run_id}?wait={wait_s:g}") as resp:
            if resp.status != 200:
                return {"status": f"HTTP {resp.status}", "body": (await resp.read())[:200].decode(errors="replace")}
            return _json(await resp.read())
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None


def audit(ledger: Ledger, executions: Counter[str]) -> dict[str, Any]:
    """Exactly one terminal state per accepted run, and what each ran; `violations` lists the breaches."""
    accepted = ledger.accepted()
    ids = Counter(s.run_id for s in accepted)
    outcomes: Counter[str] = Counter()
    violations: list[dict[str, Any]] = []
    ran: Counter[str] = Counter()
    over_retries: list[dict[str, Any]] = []

    def breach(sub: Submission, what: str) -> None:
        violations.append(
            {"what": what, "token": sub.token, "run_id": sub.run_id, "first": sub.first, "final": sub.final}
        )

    for sub in accepted:
        final = sub.final or {}
        status = final.get("status")
        if status not in TERMINAL:
            breach(sub, "not terminal")
            outcomes["lost"] += 1
            continue
        kind = (final.get("error") or {}).get("kind")
        outcomes[status if status == "succeeded" else f"{status}:{kind}"] += 1
        if ids[sub.run_id] > 1:
            breach(sub, "two submissions answered with the same run id")
        first = sub.first or {}
        if first.get("status") != status or (status == "succeeded" and first.get("result") != final.get("result")):
            breach(sub, "answered twice: the terminal state changed")
        if status == "succeeded" and final.get("result") != sub.x:
            breach(sub, "wrong result")
        count = executions.get(sub.token, 0)
        ran["once" if count == 1 else "never" if count == 0 else "more than once"] += 1
        if status == "succeeded" and count == 0:
            breach(sub, "succeeded without running")
        if sub.retries == 0 and count > 1:
            breach(sub, f"ran {count} times with retries=0")
        if sub.retries is not None and count > sub.retries + 1:
            over_retries.append({"token": sub.token, "retries": sub.retries, "ran": count, "final": final})
    rejected = Counter(s.rejected for s in ledger.submissions if s.run_id is None)
    return {
        "submitted": len(ledger.submissions),
        "accepted": len(accepted),
        "not_accepted": dict(rejected),
        "outcomes": dict(sorted(outcomes.items())),
        "lost": outcomes["lost"],
        "executions": dict(ran),
        "violations": len(violations),
        "violation_examples": violations[:10],
        "cancel_requested": {
            "runs": len(cancelled := [s for s in accepted if s.cancel is not None]),
            "ended": dict(Counter(str((s.final or {}).get("status")) for s in cancelled)),
        },
        "ran_more_than_retries_allow": {"runs": len(over_retries), "examples": over_retries[:5]},
        "resubmitted_after_transport_error": sum(1 for s in ledger.submissions if s.transport_errors),
    }


def percentiles_ms(values_s: list[float]) -> dict[str, Any]:
    """Nearest-rank p50/p99 (and max, n) in ms."""
    if not values_s:
        return {"n": 0}
    ordered = sorted(values_s)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000, 2)

    return {"n": len(ordered), "p50": rank(50), "p99": rank(99), "max": round(ordered[-1] * 1000, 2)}


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute; None with fewer than 3 points."""
    if len(points) < 3 or len({t for t, _ in points}) < 2:
        return None
    xs, ys = zip(*points, strict=True)
    return round(statistics.linear_regression(xs, ys).slope * 60, 3)
