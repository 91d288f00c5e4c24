"""Run records in a real SQLite file: grouped writes, reads after reopening, idempotency keys, expiry."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from neutrino_gateway.store import Run, RunStore


def new_run(run_id: str, key: str | None = None, ttl: float = 60.0) -> Run:
    now = time.time()
    return Run(
        id=run_id,
        task="add",
        payload=b"\x92\x90\x80",
        timeout_s=None,
        retries=1,
        created_at=now,
        expires_at=now + ttl,
        idempotency_key=key,
    )


def test_writes_in_one_loop_turn_share_one_transaction(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    commits = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

    async def main() -> None:
        runs = [new_run(f"r{i}") for i in range(50)]
        for run in runs:
            store.stage_insert(run)
        await asyncio.gather(*(store.commit() for _ in runs))

    asyncio.run(main())
    assert len(commits) == 1
    assert store.get("r7") is not None and store.get("r7").status == "queued"  # type: ignore[union-attr]
    store.close()


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = RunStore(path)

    async def main() -> None:
        done, pending = new_run("done", key="k1"), new_run("pending")
        store.stage_insert(done)
        store.stage_insert(pending)
        await store.commit()
        done.status, done.result, done.attempts, done.finished_at = "succeeded", b"\x2a", 1, time.time()
        store.stage_update(done)
        await store.commit()

    asyncio.run(main())
    store._db.close()  # as if killed: no close() bookkeeping
    again = RunStore(path)
    done = again.get("done")
    assert done is not None and done.status == "succeeded" and done.result == b"\x2a" and done.attempts == 1
    assert again.by_idempotency_key("k1") is not None and again.by_idempotency_key("k1").id == "done"  # type: ignore[union-attr]
    assert [run.id for run in again.unfinished()] == ["pending"]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_expired_runs_are_gone_and_free_their_key(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")

    async def main() -> None:
        run = new_run("old", key="k", ttl=-1)
        run.status = "succeeded"
        store.stage_insert(run)
        await store.commit()

    asyncio.run(main())
    assert store.get("old") is None and store.by_idempotency_key("k") is None
    assert store.expire() == 0  # by_idempotency_key already removed it
    store.close()


def test_a_failed_write_reaches_every_waiter(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")

    async def main() -> None:
        store.stage_insert(new_run("same"))
        await store.commit()
        store.stage_insert(new_run("same"))
        with pytest.raises(sqlite3.IntegrityError):
            await store.commit()
        store.stage_insert(new_run("next"))
        await store.commit()  # the store keeps working

    asyncio.run(main())
    assert store.get("next") is not None
    store.close()


def test_the_wal_is_copied_into_the_file_off_the_event_loop(tmp_path: Path) -> None:
    """The store turns SQLite's own checkpoints off (they ran in the committing connection, on the
    event loop) and its Checkpointer thread copies the WAL into the file instead."""
    path = tmp_path / "runs.db"
    store = RunStore(path)
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    empty = path.stat().st_size

    async def main() -> None:
        for i in range(2000):
            store.stage_insert(new_run(f"r{i}"))
        await store.commit()

    asyncio.run(main())
    wal = path.with_name("runs.db-wal")
    assert wal.stat().st_size > 100_000 and path.stat().st_size == empty  # in the WAL only
    deadline = time.monotonic() + 30
    while path.stat().st_size == empty:  # the checkpointer's next round (every CHECKPOINT_EVERY_S)
        assert time.monotonic() < deadline, "the WAL was not checkpointed within 30 s"
        time.sleep(0.05)
    assert sqlite3.connect(path).execute("SELECT count(*) FROM runs").fetchone() == (2000,)
    store.close()
