"""The gateway's trace context without processes: the run id in the `tracestate`, the context a request
starts a run with when tracing is off, and a run store written by an older gateway (no trace column)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from neutrino_gateway import tracing
from neutrino_gateway.store import Run, RunStore

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_run_id_goes_first_in_the_tracestate() -> None:
    assert tracing.with_run(None, "r1") == "neutrino=r1"
    assert tracing.with_run("rojo=1,congo=2", "r1") == "neutrino=r1,rojo=1,congo=2"
    # An earlier neutrino entry (a run that started this one) is replaced; malformed entries are dropped.
    assert tracing.with_run("neutrino=old, rojo=1,,Bad Key=x,congo=", "r1") == "neutrino=r1,rojo=1"


def test_the_tracestate_stays_within_the_w3c_and_protocol_limits() -> None:
    many = ",".join(f"k{i}=v" for i in range(40))
    assert len(tracing.with_run(many, "r1").split(",")) == 32
    long = ",".join(f"k{i}={'v' * 100}" for i in range(10))
    state = tracing.with_run(long, "r1")
    assert len(state.encode()) <= 512 and state.startswith("neutrino=r1,k0=")


def test_off_a_run_keeps_the_callers_context_or_starts_a_trace() -> None:
    assert tracing.run_context({"traceparent": TRACEPARENT, "tracestate": "rojo=1"}) == (TRACEPARENT, "rojo=1")
    for headers in ({}, {"traceparent": "junk"}, {"traceparent": TRACEPARENT.upper()}):
        assert tracing.run_context(headers) is None  # the run starts a trace of its own (runs.py)


def test_a_store_an_older_gateway_wrote_gains_the_trace_column(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE runs (id TEXT PRIMARY KEY, task TEXT NOT NULL, payload BLOB NOT NULL, timeout_s REAL,
        retries INTEGER, status TEXT NOT NULL, result BLOB, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, started_at REAL, finished_at REAL, expires_at REAL NOT NULL, idempotency_key TEXT);"""
    )
    now = time.time()
    old.execute(
        "INSERT INTO runs (id, task, payload, status, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        ("old", "add", b"\x92\x90\x80", "succeeded", now, now + 60),
    )
    old.commit()
    old.close()
    store = RunStore(path)
    before = store.get("old")
    assert before is not None and before.traceparent is None and before.trace_id is None
    run = Run(
        id="new", task="add", payload=b"\x92\x90\x80", timeout_s=None, retries=None, created_at=now, expires_at=now + 60
    )
    run.traceparent = TRACEPARENT
    store.stage_insert(run)
    assert store.flush() is None
    store.close()
    again = RunStore(path)  # opening a migrated file again changes nothing
    after = again.get("new")
    assert after is not None and after.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert [r.id for r in again.recent(10)] == ["new", "old"]
    again.close()
