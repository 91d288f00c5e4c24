"""The run store when a write fails: rolled back whole, new runs dropped, outcomes kept and written
again once the file takes them. A real SQLite file; the failure is a real one (another connection
holds the write lock past the store's busy timeout)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from neutrino_gateway.store import Run, RunStore


def new_run(run_id: str) -> Run:
    now = time.time()
    return Run(
        id=run_id, task="add", payload=b"\x92\x90\x80", timeout_s=None, retries=0, created_at=now, expires_at=now + 60
    )


def test_a_failed_write_drops_new_runs_and_keeps_outcomes_until_written(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = RunStore(path)
    accepted = new_run("accepted")
    store.stage_insert(accepted)
    assert store.flush() is None

    async def main() -> None:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, held past the store's busy timeout
        refused = new_run("refused")
        store.stage_insert(refused)
        accepted.status, accepted.result = "succeeded", b"\x03"
        store.stage_update(accepted)
        heard: list[BaseException | None] = []
        store.after_commit(heard.append)
        error = store.flush()
        assert isinstance(error, sqlite3.OperationalError) and heard == [error]
        # Retried within RETRY_S once the lock is gone: only the outcome, not the refused run.
        blocker.execute("ROLLBACK")
        blocker.close()
        written = asyncio.get_running_loop().create_future()
        store.after_commit(written.set_result)
        assert await asyncio.wait_for(written, 10) is None

    asyncio.run(main())
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT id, status, result FROM runs").fetchall() == [("accepted", "succeeded", b"\x03")]
    conn.close()


def test_closing_with_a_write_that_cannot_be_made_leaves_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = RunStore(path)
    run = new_run("r1")
    store.stage_insert(run)
    assert store.flush() is None
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    run.status = "succeeded"
    store.stage_update(run)
    store.close()  # logs the failure; does not raise
    blocker.execute("ROLLBACK")
    blocker.close()
    reopened = RunStore(path)
    assert [r.id for r in reopened.unfinished()] == ["r1"]  # still in flight: the next gateway deals with it
    reopened.close()
