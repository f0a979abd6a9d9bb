"""Pending settlements in SQLite (the :class:`~dgpu.node.ports.settlement.SettlementStore` port).

A file of its own next to the node's other state (``settlements.sqlite3``, mode 0600), written by
the stdlib ``sqlite3`` from ``trio.to_thread`` behind a ``CapacityLimiter(1)``, like
``adapters.store``: one connection, one thread at a time. Renters and providers both keep one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from dgpu.node.errors import StoreError
from dgpu.node.ports.settlement import PendingSettlement, SettlementAction
from dgpu.protocol.ledger import EscrowHandle

__all__ = ["SettlementStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settlements (
    address TEXT PRIMARY KEY,
    ledger TEXT NOT NULL, renter TEXT NOT NULL, provider TEXT NOT NULL,
    rental_id TEXT NOT NULL,                 -- u64 as decimal text
    action TEXT NOT NULL CHECK (action IN ('close', 'refund_unstarted', 'settle_expired')),
    due_at INTEGER NOT NULL,                 -- ledger time
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    done_at REAL,                            -- NULL while pending
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS settlements_pending ON settlements (done_at);
"""
_COLUMNS = "address, ledger, renter, provider, rental_id, action, due_at, attempts, last_error"


def _row(row: tuple[str, str, str, str, str, SettlementAction, int, int, str]) -> PendingSettlement:
    handle = EscrowHandle(ledger=row[1], address=row[0], renter=row[2], provider=row[3], rental_id=int(row[4]))
    return PendingSettlement(handle, row[5], int(row[6]), int(row[7]), row[8])


class SettlementStore:
    """Build with :meth:`open`; :meth:`close` when done."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> SettlementStore:
        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # before sqlite creates it world-readable
            os.close(fd)
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a settlement must survive a power cut
            db.executescript(_SCHEMA)
            return db

        try:
            return cls(await trio.to_thread.run_sync(connect))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self._run(self._db.close)

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"settlement store: {exc}") from exc

    async def put(self, pending: PendingSettlement) -> PendingSettlement:
        h = pending.handle

        def put() -> PendingSettlement:
            with contextlib.closing(self._db.cursor()) as cur:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    cur.execute(
                        "INSERT INTO settlements (address, ledger, renter, provider, rental_id, action, due_at, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET "
                        "action = CASE WHEN excluded.action = 'settle_expired' THEN action ELSE excluded.action END, "
                        "due_at = MIN(due_at, excluded.due_at) WHERE done_at IS NULL",
                        (h.address, h.ledger, h.renter, h.provider, str(h.rental_id), pending.action,
                         pending.due_at, time.time()))
                    row = cur.execute(f"SELECT {_COLUMNS} FROM settlements WHERE address = ?",
                                      (h.address,)).fetchone()
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
            return _row(row)

        return await self._run(put)

    async def pending(self) -> list[PendingSettlement]:
        def read() -> list[PendingSettlement]:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM settlements WHERE done_at IS NULL ORDER BY due_at").fetchall()
            return [_row(r) for r in rows]

        return await self._run(read)

    async def failed(self, address: str, error: str, *, due_at: int | None = None) -> None:
        def write() -> None:
            self._db.execute(
                "UPDATE settlements SET attempts = attempts + ?, last_error = ?, due_at = COALESCE(?, due_at) "
                "WHERE address = ? AND done_at IS NULL",
                (0 if due_at is not None else 1, error[:500], due_at, address))

        await self._run(write)

    async def done(self, address: str, outcome: str) -> None:
        def write() -> None:
            self._db.execute("UPDATE settlements SET done_at = ?, outcome = ? WHERE address = ? AND done_at IS NULL",
                             (time.time(), outcome[:200], address))

        await self._run(write)
