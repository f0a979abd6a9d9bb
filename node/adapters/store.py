"""Durable job, rental and usage state in SQLite.

Choice: the stdlib ``sqlite3`` driven from ``trio.to_thread.run_sync`` behind a
``CapacityLimiter(1)``, not aiosqlite under trio-asyncio. aiosqlite is itself one worker
thread per connection plus asyncio futures; under trio it needs a ``trio_asyncio`` loop
held open around every caller (daemon, tests, the crash-restart runner) for no gain. One
connection, one thread at a time gives the same concurrency and serialises writers, which
SQLite wants anyway.

Rules:
- every job lifecycle move goes through :meth:`Store.transition`, which checks the
  :data:`TRANSITIONS` table and writes state + an event row in one transaction; an illegal
  move raises :class:`IllegalTransition` and changes nothing;
- usage minutes have ``UNIQUE(job_id, minute_index)``; :meth:`Store.record_minute` is an
  ``INSERT OR IGNORE`` and says whether the row was new, so a minute is never counted twice,
  whatever restarts happen;
- the schema is versioned: ``schema_version`` holds one row; :data:`MIGRATIONS` is an
  ordered list applied in one transaction each; a database newer than the code is refused;
- secrets: the database and its ``-wal``/``-shm`` are mode 0600 (SQLite gives the side files
  the main file's mode). A job's environment (the renter's secrets) is kept only while the job
  may still run, so a restarted daemon can re-attach it; the move to a terminal state blanks
  it in the same transaction, with ``secure_delete`` zeroing the old bytes and a truncating
  checkpoint emptying the WAL, so no copy is left in any file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from dgpu.node.adapters.rental_store import RENTER_RENTALS_MIGRATION, RentalRows
from dgpu.node.errors import IllegalTransition, SchemaError, StoreError, UnknownJob
from dgpu.node.ports.store import JobRecord, UsageMinute
from dgpu.protocol.job_session import JOB_TRANSITIONS
from dgpu.protocol.ledger import EscrowReceipt
from dgpu.protocol.messages import JobState

__all__ = [
    "MIGRATIONS",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "JobRecord",
    "JobState",
    "Store",
    "UsageMinute",
]

T = TypeVar("T")


TERMINAL_STATES = frozenset(s for s in JobState if s.terminal)

#: from-state → the states it may move to (the protocol's table, the one renters check);
#: anything else raises IllegalTransition
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    state: targets for state, targets in JOB_TRANSITIONS.items() if state is not None
}

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, their transition log, rentals, usage minutes
    """
    CREATE TABLE rentals (
        rental_id TEXT PRIMARY KEY,
        renter TEXT NOT NULL,
        rate_per_minute INTEGER NOT NULL CHECK (rate_per_minute >= 0),
        max_minutes INTEGER NOT NULL CHECK (max_minutes >= 0),
        created_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        rental_id TEXT NOT NULL,
        executor TEXT NOT NULL,
        state TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        container_id TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        exit_code INTEGER,
        reason TEXT,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        at REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE usage_minutes (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        minute_index INTEGER NOT NULL CHECK (minute_index >= 0),
        wall_seconds REAL NOT NULL,
        recorded_at REAL NOT NULL,
        backfilled INTEGER NOT NULL DEFAULT 0,
        samples_json TEXT NOT NULL DEFAULT '[]',
        UNIQUE (job_id, minute_index)
    );
    """,
    # 2: money per rental: every escrow instruction this node made or saw settle, by tx
    """
    CREATE TABLE escrow_receipts (
        tx TEXT PRIMARY KEY,
        escrow TEXT NOT NULL,
        rental_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('provider', 'renter')),
        action TEXT NOT NULL,
        at INTEGER NOT NULL,
        deposited INTEGER NOT NULL CHECK (deposited >= 0),
        paid INTEGER NOT NULL CHECK (paid >= 0),
        fee INTEGER NOT NULL CHECK (fee >= 0),
        refunded INTEGER NOT NULL CHECK (refunded >= 0)
    );
    CREATE INDEX escrow_receipts_escrow ON escrow_receipts (escrow);
    """,
    # 3: jobs that ended before environments were blanked at the end lose theirs now
    "UPDATE jobs SET spec_json = json_set(spec_json, '$.env', json('{}')) WHERE state IN ("
    + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATES)) + ")",
    # 4: a renter's rentals, so a restarted node re-attaches to its jobs (rental_store.py)
    RENTER_RENTALS_MIGRATION,
)


_JOB_COLUMNS = (
    "job_id, rental_id, executor, state, spec_json, container_id, created_at, started_at, "
    "finished_at, exit_code, reason, detail"
)


def _job_from_row(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        job_id=row[0],
        rental_id=row[1],
        executor=row[2],
        state=JobState(row[3]),
        spec=json.loads(row[4]),
        container_id=row[5],
        created_at=row[6],
        started_at=row[7],
        finished_at=row[8],
        exit_code=row[9],
        reason=row[10],
        detail=row[11],
    )


class Store(RentalRows):
    """One SQLite database. Use ``async with await Store.open(path) as store`` or close()."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._clock = clock
        # one thread at a time on the one connection: SQLite serialises writers anyway
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> Store:
        def _open() -> sqlite3.Connection:
            try:
                _private_files(Path(path))
                conn = sqlite3.connect(
                    str(path), check_same_thread=False, isolation_level=None, timeout=10.0
                )
                conn.execute("PRAGMA secure_delete=ON")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                _migrate(conn, migrations)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the state database {path}: {exc}") from exc
            return conn

        return cls(await trio.to_thread.run_sync(_open), clock)

    async def close(self) -> None:
        await self._run(self._conn.close)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[[], T]) -> T:
        def call() -> T:
            try:
                return fn()
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    # --- schema ----------------------------------------------------------------------

    async def schema_version(self) -> int:
        return await self._run(lambda: _version(self._conn))

    # --- rentals ---------------------------------------------------------------------

    async def add_rental(
        self, rental_id: str, renter: str, rate_per_minute: int, max_minutes: int
    ) -> None:
        if not isinstance(rate_per_minute, int) or not isinstance(max_minutes, int):
            raise TypeError("money and minutes are integers")
        now = self._clock()
        await self._run(
            lambda: self._conn.execute(
                "INSERT OR IGNORE INTO rentals VALUES (?, ?, ?, ?, ?)",
                (rental_id, renter, rate_per_minute, max_minutes, now),
            )
        )

    async def get_rental(self, rental_id: str) -> dict[str, Any] | None:
        def q() -> dict[str, Any] | None:
            row = self._conn.execute(
                "SELECT rental_id, renter, rate_per_minute, max_minutes, created_at "
                "FROM rentals WHERE rental_id = ?",
                (rental_id,),
            ).fetchone()
            if row is None:
                return None
            keys = ("rental_id", "renter", "rate_per_minute", "max_minutes", "created_at")
            return dict(zip(keys, row, strict=True))

        return await self._run(q)

    # --- jobs ------------------------------------------------------------------------

    async def add_job(
        self, job_id: str, rental_id: str, executor: str, spec: dict[str, Any]
    ) -> JobRecord:
        """Persist a new job in ACCEPTED. Raises StoreError if the id exists."""
        now = self._clock()

        def q() -> JobRecord:
            self._conn.execute(
                "INSERT INTO jobs (job_id, rental_id, executor, state, spec_json, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, rental_id, executor, JobState.ACCEPTED.value, json.dumps(spec), now),
            )
            return self._get_job_sync(job_id)

        return await self._run(q)

    async def get_job(self, job_id: str) -> JobRecord:
        return await self._run(lambda: self._get_job_sync(job_id))

    def _get_job_sync(self, job_id: str) -> JobRecord:
        row = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise UnknownJob(job_id)
        return _job_from_row(row)

    async def jobs_in(self, states: Sequence[JobState]) -> list[JobRecord]:
        marks = ",".join("?" * len(states))

        def q() -> list[JobRecord]:
            rows = self._conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY created_at",
                [s.value for s in states],
            ).fetchall()
            return [_job_from_row(r) for r in rows]

        return await self._run(q)

    async def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        detail: str = "",
        container_id: str | None = None,
        started_at: float | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> JobRecord:
        """Move a job to ``to`` if the table allows it (atomically); return the new record.

        Raises IllegalTransition (state unchanged) or UnknownJob.
        """
        now = self._clock()

        def q() -> JobRecord:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._get_job_sync(job_id)
                if to not in TRANSITIONS[current.state]:
                    raise IllegalTransition(
                        f"job {job_id}: {current.state.value} -> {to.value} is not allowed"
                    )
                sets = ["state = ?", "detail = ?"]
                args: list[Any] = [to.value, detail]
                if container_id is not None:
                    sets.append("container_id = ?")
                    args.append(container_id)
                if to is JobState.RUNNING:
                    sets.append("started_at = ?")
                    args.append(started_at if started_at is not None else now)
                if to in TERMINAL_STATES:
                    sets += ["finished_at = ?", "exit_code = ?", "reason = ?", _BLANK_ENV]
                    args += [now, exit_code, reason or to.value]
                conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?", [*args, job_id])
                conn.execute(
                    "INSERT INTO job_events (job_id, from_state, to_state, at, detail) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (job_id, current.state.value, to.value, now, detail),
                )
                record = self._get_job_sync(job_id)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if to in TERMINAL_STATES:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL held the env too
            return record

        return await self._run(q)

    async def set_container(self, job_id: str, container_id: str) -> None:
        await self._run(
            lambda: self._conn.execute(
                "UPDATE jobs SET container_id = ? WHERE job_id = ?", (container_id, job_id)
            )
        )

    async def events(self, job_id: str) -> list[tuple[str, str]]:
        def q() -> list[tuple[str, str]]:
            rows = self._conn.execute(
                "SELECT from_state, to_state FROM job_events WHERE job_id = ? ORDER BY id",
                (job_id,),
            ).fetchall()
            return [(a, b) for a, b in rows]

        return await self._run(q)

    # --- usage -----------------------------------------------------------------------

    async def record_minute(
        self,
        job_id: str,
        minute_index: int,
        wall_seconds: float,
        samples: Sequence[dict[str, Any]] = (),
        *,
        backfilled: bool = False,
    ) -> bool:
        """Record one metered minute; False (and nothing written) if it was recorded before."""
        now = self._clock()
        samples_json = json.dumps(list(samples))

        def q() -> bool:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO usage_minutes "
                "(job_id, minute_index, wall_seconds, recorded_at, backfilled, samples_json) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, minute_index, wall_seconds, now, int(backfilled), samples_json),
            )
            return cur.rowcount == 1

        return await self._run(q)

    async def minutes(self, job_id: str, from_index: int = 0) -> list[UsageMinute]:
        def q() -> list[UsageMinute]:
            rows = self._conn.execute(
                "SELECT job_id, minute_index, wall_seconds, recorded_at, backfilled, samples_json "
                "FROM usage_minutes WHERE job_id = ? AND minute_index >= ? ORDER BY minute_index",
                (job_id, from_index),
            ).fetchall()
            return [
                UsageMinute(r[0], r[1], r[2], r[3], bool(r[4]), json.loads(r[5])) for r in rows
            ]

        return await self._run(q)

    async def record_receipt(self, role: str, receipt: EscrowReceipt) -> bool:
        """Record one escrow instruction's money movements; False if this tx was recorded."""
        r = receipt

        def q() -> bool:
            with self._conn:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO escrow_receipts (tx, escrow, rental_id, role, action, at, deposited, "
                    "paid, fee, refunded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.tx, r.escrow.address, str(r.escrow.rental_id), role, r.action, r.now, r.deposited, r.paid,
                     r.fee, r.refunded),
                )
                return cur.rowcount == 1

        return await self._run(q)

    async def rental_totals(self, role: str) -> list[dict[str, Any]]:
        """Per escrow: what was deposited, paid to the provider, taken as fee and refunded."""

        def q() -> list[dict[str, Any]]:
            rows = self._conn.execute(
                "SELECT escrow, rental_id, SUM(deposited), SUM(paid), SUM(fee), SUM(refunded), MIN(at), MAX(at), "
                "COUNT(*) FROM escrow_receipts WHERE role = ? GROUP BY escrow ORDER BY MIN(at)", (role,)
            ).fetchall()
            keys = ("escrow", "rental_id", "deposited", "paid", "fee", "refunded", "first_at", "last_at",
                    "transactions")
            return [dict(zip(keys, r, strict=True)) for r in rows]

        return await self._run(q)

    async def last_minute_index(self, job_id: str) -> int | None:
        def q() -> int | None:
            row = self._conn.execute(
                "SELECT MAX(minute_index) FROM usage_minutes WHERE job_id = ?", (job_id,)
            ).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._run(q)


_BLANK_ENV = "spec_json = json_set(spec_json, '$.env', json('{}'))"


def _private_files(path: Path) -> None:
    """Create the database file 0600 (its -wal/-shm inherit the mode); narrow older ones."""
    if str(path) == ":memory:":
        return
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            p.chmod(0o600)


def _version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def _migrate(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> None:
    """Apply every migration after the stored version, each in its own transaction."""
    current = _version(conn)
    if current > len(migrations):
        raise SchemaError(
            f"the database has schema version {current}; this code knows up to {len(migrations)}"
        )
    for version in range(current + 1, len(migrations) + 1):
        script = migrations[version - 1]
        statements = [s for s in script.split(";") if s.strip()]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
