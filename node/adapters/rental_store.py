"""The renter's rentals in the node's SQLite database (``Store`` mixes :class:`RentalRows` in).

Why: a batch job outlives its renter's node, so the node keeps each rental (the agreement, the
provider's peer, the first log chunk not yet received, the result reference) and re-attaches
after a restart. Ended rentals are pruned after :data:`ENDED_KEEP_S`, so the table stays
bounded. The API job's spec is kept without its environment (the renter's secrets).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from dgpu.node.ports.store import RentalRecord

__all__ = ["ENDED_KEEP_S", "RENTER_RENTALS_MIGRATION", "RentalRows"]

T = TypeVar("T")

#: ended rentals are forgotten after this long (30 days)
ENDED_KEEP_S: Final = 30 * 24 * 3600.0

RENTER_RENTALS_MIGRATION: Final = """
CREATE TABLE renter_rentals (
    agreement_id TEXT PRIMARY KEY,
    provider_peer TEXT NOT NULL,
    provider_addrs_json TEXT NOT NULL DEFAULT '[]',
    agreement_json TEXT NOT NULL,
    stop_on_disconnect INTEGER NOT NULL DEFAULT 0,
    log_offset INTEGER NOT NULL DEFAULT 0 CHECK (log_offset >= 0),
    state TEXT,
    result_json TEXT,
    ended INTEGER NOT NULL DEFAULT 0,
    api_job_id TEXT,
    api_spec_json TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX renter_rentals_open ON renter_rentals (ended, created_at);
CREATE INDEX renter_rentals_api_job ON renter_rentals (api_job_id);
"""

_COLUMNS = ("agreement_id, provider_peer, provider_addrs_json, agreement_json, stop_on_disconnect, log_offset, "
            "state, result_json, ended, api_job_id, api_spec_json, created_at, updated_at")


def _record(row: Sequence[Any]) -> RentalRecord:
    return RentalRecord(
        agreement_id=row[0], provider_peer=row[1], provider_addrs=tuple(json.loads(row[2])),
        agreement=json.loads(row[3]), stop_on_disconnect=bool(row[4]), log_offset=row[5], state=row[6],
        result=json.loads(row[7]) if row[7] else None, ended=bool(row[8]), api_job_id=row[9],
        api_spec=json.loads(row[10]) if row[10] else None, created_at=row[11], updated_at=row[12])


class RentalRows:
    """``RentalBook`` (``node.ports.store``) over the store's one connection."""

    _conn: sqlite3.Connection
    _clock: Callable[[], float]
    _run: Callable[[Callable[[], Any]], Awaitable[Any]]

    async def add_rental_record(self, agreement_id: str, provider_peer: str, agreement: dict[str, Any], *,
                                provider_addrs: Sequence[str], stop_on_disconnect: bool) -> None:
        now = self._clock()
        await self._run(lambda: self._conn.execute(
            "INSERT OR IGNORE INTO renter_rentals (agreement_id, provider_peer, provider_addrs_json, "
            "agreement_json, stop_on_disconnect, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (agreement_id, provider_peer, json.dumps(list(provider_addrs)[:16]), json.dumps(agreement),
             int(stop_on_disconnect), now, now)))

    async def link_api_job(self, agreement_id: str, api_job_id: str, api_spec: dict[str, Any]) -> None:
        spec = {k: v for k, v in api_spec.items() if k != "env"}  # secrets stay in memory only
        await self._run(lambda: self._conn.execute(
            "UPDATE renter_rentals SET api_job_id = ?, api_spec_json = ? WHERE agreement_id = ?",
            (api_job_id, json.dumps(spec), agreement_id)))

    async def rental_progress(self, agreement_id: str, *, log_offset: int, state: str | None,
                              result: dict[str, Any] | None = None) -> None:
        now = self._clock()
        await self._run(lambda: self._conn.execute(
            "UPDATE renter_rentals SET log_offset = MAX(log_offset, ?), state = COALESCE(?, state), "
            "result_json = COALESCE(?, result_json), updated_at = ? WHERE agreement_id = ?",
            (log_offset, state, json.dumps(result) if result is not None else None, now, agreement_id)))

    async def end_rental_record(self, agreement_id: str, state: str | None) -> None:
        now = self._clock()
        await self._run(lambda: self._conn.execute(
            "UPDATE renter_rentals SET ended = 1, state = COALESCE(?, state), updated_at = ? WHERE agreement_id = ?",
            (state, now, agreement_id)))

    async def rental_record(self, key: str) -> RentalRecord | None:
        def q() -> RentalRecord | None:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM renter_rentals WHERE agreement_id = ? OR api_job_id = ? "
                "ORDER BY created_at DESC LIMIT 1", (key, key)).fetchone()
            return None if row is None else _record(row)

        result: RentalRecord | None = await self._run(q)
        return result

    async def open_rental_records(self) -> list[RentalRecord]:
        cutoff = self._clock() - ENDED_KEEP_S

        def q() -> list[RentalRecord]:
            self._conn.execute("DELETE FROM renter_rentals WHERE ended = 1 AND updated_at < ?", (cutoff,))
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM renter_rentals WHERE ended = 0 ORDER BY created_at").fetchall()
            return [_record(r) for r in rows]

        result: list[RentalRecord] = await self._run(q)
        return result
