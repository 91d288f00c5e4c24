"""Run records in an embedded SQLite file (WAL): a run's row, then its outcome (runs.py says when
each is written). Only persistence: the record (`Run`) and what happens to it are runs.py's.

Writes are grouped: what is staged goes to disk in one transaction at the next `flush()`, which
the caller schedules (runs.py: at once when the gateway is quiet, within a short window under
load), so a burst of requests costs one commit, not one each.
The writes stay on the event loop; only checkpoints (copying the WAL into the file, and their
fsync) run on a thread of their own (`Checkpointer`). A writer thread was tried and lost: the
sqlite3 module takes the GIL back between statements, a busy loop hands it over only every few
milliseconds, and every request waits for its run's write.
WAL with `synchronous=NORMAL` survives a killed gateway (the point of the records); a power loss
may lose the last transactions, which is the usual trade for a queue's metadata.

A write that fails (a full disk, a file-size limit) is rolled back whole, so the file stays
consistent. New runs in it are dropped: their callers hear the error (a 503) and nothing was
accepted. Outcomes and deletions of runs already accepted are kept staged and written again every
RETRY_S until the disk takes them; until then their waiters are not told (runs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .run import Run

log = logging.getLogger("neutrino.gateway")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    payload BLOB NOT NULL,
    timeout_s REAL,
    retries INTEGER,
    status TEXT NOT NULL,
    result BLOB,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL NOT NULL,
    idempotency_key TEXT,
    traceparent TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_idempotency_key ON runs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (status) WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS runs_expires_at ON runs (expires_at);
"""

RETRY_S = 1.0  # after a failed write, how soon what must not be lost is written again
# How often the WAL is copied into the database file, off the event loop (Checkpointer). At
# 10,000 runs/s the WAL grows by a few MB a second, and the next write after a whole checkpoint
# starts it again from its beginning; SQLite's own default, a checkpoint by the committing
# connection every 1,000 pages, ran on the loop and stalled it for the copy and its fsync.
CHECKPOINT_EVERY_S = 1.0


class RunStore:
    """The runs table, with writes grouped per event-loop turn."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Writes run on the event loop: waiting long on a lock held by another process would stall
        # the pings too and make every task pod look lost. Fail the write instead.
        self._db.execute("PRAGMA busy_timeout=200")
        self._db.executescript(SCHEMA)
        _migrate(self._db)
        # Commits on the loop only append to the WAL; the checkpointer copies it into the file.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = Checkpointer(path)
        self._cursor = self._db.cursor()  # one for every write: Connection.execute makes one per call
        # (sql, params, keep): `keep` statements are written again when a write fails (see the top).
        self._staged: list[tuple[str, tuple[Any, ...], bool]] = []
        self._callbacks: list[Callable[[BaseException | None], None]] = []
        self._flush_scheduled = False
        self.failing = False  # the last write failed (runs.py then writes every new run first)

    def close(self) -> None:
        try:
            self._write_staged()
        except sqlite3.Error as exc:
            # The runs whose outcomes these were are still `running` on disk: the next gateway
            # deals with them as runs left in flight (runs.py), and nobody was told their outcome.
            log.error("closing the run store: %d writes could not be made: %s", len(self._staged), exc)
        self._checkpointer.stop()
        self._db.close()  # the last connection to close checkpoints what is left and removes the WAL

    # -- writes -------------------------------------------------------------------------------

    def stage_insert(self, run: Run, keep: bool = False) -> None:
        """A new run's row. `keep`: written again when a write fails (a run already sent, runs.py);
        a new run's insert is not (its caller hears the error and nothing was accepted)."""
        self._staged.append(
            (
                "INSERT INTO runs (id, task, payload, timeout_s, retries, status, attempts, created_at, expires_at,"
                " idempotency_key, traceparent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.task,
                    run.payload,
                    run.timeout_s,
                    run.retries,
                    run.status,
                    run.attempts,
                    run.created_at,
                    run.expires_at,
                    run.idempotency_key,
                    run.traceparent,
                ),
                keep,
            )
        )

    def stage_update(self, run: Run) -> None:
        self.stage_finish(run, run.status, run.attempts, run.result, run.error, run.finished_at, run.expires_at)

    def stage_finish(
        self,
        run: Run,
        status: str,
        attempts: int,
        result: bytes | None,
        error: dict[str, Any] | None,
        finished_at: float | None,
        expires_at: float,
    ) -> None:
        """`run`'s outcome, staged before it is set on `run` (runs.py sets it once this is written).
        A run with no row yet (`run.stored` false, runs.py) gets one, outcome and all, in one statement."""
        if not run.stored:
            row = (
                run.id,
                run.task,
                run.payload,
                run.timeout_s,
                run.retries,
                status,
                result,
                None if error is None else json.dumps(error),
                attempts,
                run.created_at,
                run.started_at,
                finished_at,
                expires_at,
                run.idempotency_key,
                run.traceparent,
            )
            if error is None and run.timeout_s is None and run.retries is None and run.idempotency_key is None:
                # The usual sync run: its NULL columns are left out, to their default. Binding 11
                # parameters, not 15, is about 1.3 µs less per row (60,000-row table, 40 rows a commit).
                self._staged.append((_INSERT_FINISHED_LEAN, _lean(row), True))
            else:
                self._staged.append((_INSERT_FINISHED, row, True))
            return
        self._staged.append(
            (
                "UPDATE runs SET status = ?, result = ?, error = ?, attempts = ?, started_at = ?, finished_at = ?,"
                " expires_at = ? WHERE id = ?",
                (
                    status,
                    result,
                    None if error is None else json.dumps(error),
                    attempts,
                    run.started_at,
                    finished_at,
                    expires_at,
                    run.id,
                ),
                True,
            )
        )

    def stage_delete(self, run: Run) -> None:
        self._staged.append(("DELETE FROM runs WHERE id = ?", (run.id,), True))

    async def commit(self, delay_s: float = 0.0) -> None:
        """Write everything staged so far, within `delay_s`; everything staged meanwhile shares the transaction."""
        future = asyncio.get_running_loop().create_future()

        def done(error: BaseException | None) -> None:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(None)

        self.after_commit(done)
        self.flush_soon(delay_s)
        await future

    def after_commit(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call `callback(None)` once what is staged now is on disk (or `callback(error)` if writing failed)."""
        self._callbacks.append(callback)

    def flush_soon(self, delay_s: float = 0.0) -> None:
        """Write what is staged after `delay_s` (0: at the end of this loop turn); everything staged
        meanwhile joins in. A flush already scheduled keeps its time."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            if delay_s > 0:
                loop.call_later(delay_s, self.flush)
            else:
                loop.call_soon(self.flush)

    def flush(self) -> BaseException | None:
        """Write what is staged now, in one transaction, then run the after-commit callbacks;
        returns the error that stopped the write (None when it is on disk)."""
        self._flush_scheduled = False
        callbacks, self._callbacks = self._callbacks, []
        error: BaseException | None = None
        try:
            self._write_staged()
        except Exception as exc:  # the disk is full, the file gone or locked: every waiter hears it
            error = exc
            if self._staged:
                with contextlib.suppress(RuntimeError):  # no event loop (a unit test): the caller retries
                    self.flush_soon(RETRY_S)
        for callback in callbacks:
            callback(error)
        return error

    def _write_staged(self) -> None:
        """One transaction for everything staged; on failure it is rolled back whole and the `keep`
        statements are staged again, ahead of anything newer."""
        staged, self._staged = self._staged, []
        if not staged:
            return
        cursor = self._cursor
        execute = cursor.execute
        try:
            execute("BEGIN IMMEDIATE")
            # Consecutive statements of one kind (a burst of inserts, of outcomes) go as one
            # executemany: the same statements in the same order, for less per-statement overhead.
            for sql, group in itertools.groupby(staged, key=operator.itemgetter(0)):
                params = [entry[1] for entry in group]
                if len(params) == 1:
                    execute(sql, params[0])
                else:
                    cursor.executemany(sql, params)
            execute("COMMIT")
            self.failing = False
        except BaseException:
            self.failing = True
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    execute("ROLLBACK")
            self._staged[:0] = [entry for entry in staged if entry[2]]
            raise

    # -- reads --------------------------------------------------------------------------------

    def get(self, run_id: str, now: float | None = None) -> Run | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        run = _from_row(row) if row is not None else None
        if run is not None and run.expires_at <= (time.time() if now is None else now):
            return None
        return run

    def by_idempotency_key(self, key: str, now: float | None = None) -> Run | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM runs WHERE idempotency_key = ?", (key,)).fetchone()
        run = _from_row(row) if row is not None else None
        if run is not None and run.expires_at <= (time.time() if now is None else now):
            self._db.execute("DELETE FROM runs WHERE id = ?", (run.id,))  # expired: the key is free again
            return None
        return run

    def recent(self, limit: int, now: float | None = None) -> list[Run]:
        """The `limit` runs written first last, newest first, without their payloads and results (for
        the dashboard's list: those may be megabytes each). Rowid order is the order of first writes,
        which is creation order but for sync runs written with their outcome (runs.py), so this
        reads `limit` rows from the end of the table and needs no index that every write would pay
        for."""
        rows = self._db.execute(
            f"SELECT {_LIGHT_COLUMNS} FROM runs WHERE expires_at > ? ORDER BY rowid DESC LIMIT ?",
            (time.time() if now is None else now, limit),
        )
        return [_from_row(row) for row in rows]

    def unfinished(self) -> Iterator[Run]:
        """Runs recorded as queued or running: at start-up, what a previous gateway left in flight."""
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM runs WHERE status IN ('queued', 'running')"):
            yield _from_row(row)

    def expire(self, now: float | None = None) -> int:
        """Delete finished runs past their TTL; returns how many."""
        cur = self._db.execute(
            "DELETE FROM runs WHERE expires_at <= ? AND status IN ('succeeded', 'failed', 'cancelled')",
            (time.time() if now is None else now,),
        )
        return cur.rowcount


class Checkpointer:
    """A thread that checkpoints the WAL every CHECKPOINT_EVERY_S on a connection of its own.

    PASSIVE: it copies what is committed and never waits for (or blocks) the writer, which goes on
    appending meanwhile. The copy and its fsync run in SQLite with the GIL let go, so the event
    loop does not wait for either (measured: ~3 µs of the loop's time per run at 16 runs per
    transaction, most of it the fsync)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neutrino-wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(CHECKPOINT_EVERY_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # a full disk: the WAL keeps the writes; tried again next time
                    log.warning("checkpointing the run store's WAL failed: %s", exc)
        finally:
            db.close()


_COLUMN_NAMES = [
    "id",
    "task",
    "payload",
    "timeout_s",
    "retries",
    "status",
    "result",
    "error",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
    "idempotency_key",
    "traceparent",
]
_COLUMNS = ", ".join(_COLUMN_NAMES)
# A finished run's whole row (`stage_finish` of a run not stored yet).
_INSERT_FINISHED = f"INSERT INTO runs ({_COLUMNS}) VALUES ({', '.join('?' * len(_COLUMN_NAMES))})"
# The same without the columns a run with no timeout, retries, error or key leaves NULL (their default).
_LEAN = [i for i, name in enumerate(_COLUMN_NAMES) if name not in ("timeout_s", "retries", "error", "idempotency_key")]
_lean = operator.itemgetter(*_LEAN)
_INSERT_FINISHED_LEAN = (
    f"INSERT INTO runs ({', '.join(_COLUMN_NAMES[i] for i in _LEAN)}) VALUES ({', '.join('?' * len(_LEAN))})"
)
# The same columns with an empty payload and no result in their place (`recent`).
_LIGHT_COLUMNS = (
    "id, task, X'', timeout_s, retries, status, NULL, error, attempts, created_at, started_at, finished_at,"
    " expires_at, idempotency_key, traceparent"
)


def _from_row(row: tuple[Any, ...]) -> Run:
    (
        id_,
        task,
        payload,
        timeout_s,
        retries,
        status,
        result,
        error,
        attempts,
        created,
        started,
        finished,
        expires,
        key,
        traceparent,
    ) = row
    return Run(
        id=id_,
        task=task,
        payload=payload,
        timeout_s=timeout_s,
        retries=retries,
        created_at=created,
        expires_at=expires,
        idempotency_key=key,
        status=status,
        result=result,
        error=None if error is None else json.loads(error),
        attempts=attempts,
        started_at=started,
        finished_at=finished,
        traceparent=traceparent,
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file an older gateway wrote up to SCHEMA: columns added since are added (empty for the
    runs already in it). Two gateways opening one old file at once may both try: the second finds
    the column there."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    for column, kind in _ADDED_COLUMNS:
        if column not in columns:
            try:
                db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise


# Columns added to `runs` after its first release, oldest first: `_migrate` adds them to older files.
_ADDED_COLUMNS = (("traceparent", "TEXT"),)
