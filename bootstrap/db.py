"""SQLite persistence of the bootstrap node: auth state (roles, refresh tokens) and the pin index.

Why stdlib ``sqlite3`` in a worker thread rather than aiosqlite: the HTTP app runs on asyncio
(uvicorn under trio-asyncio), and may also run under plain uvicorn or trio; ``anyio.to_thread``
with a ``CapacityLimiter(1)`` works under each of them, while aiosqlite ties callers to asyncio.
One connection and one thread at a time also make every method a serialized transaction, so
check-then-write sequences (quota checks, refresh-token rotation) are atomic without extra
locking, and ``SyncDB`` stays a plain synchronous class that unit tests drive directly.

Invariants:
- refresh tokens are stored only as SHA-256 hashes; a leaked database cannot be replayed;
- a refresh token is used at most once (``used_at``); presenting a used one revokes its family;
- a blob row exists while at least one pin or object references its cid (``release`` removes
  the row when the last reference goes, and tells the caller to delete the bytes).
"""

from __future__ import annotations

import functools
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .errors import QuotaExceeded, StoreError

__all__ = ["AsyncDB", "ObjectRow", "PinRow", "RotateOutcome", "SyncDB"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS roles (
    wallet TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_families (
    family_id TEXT PRIMARY KEY,
    wallet TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    revoke_reason TEXT
);
CREATE INDEX IF NOT EXISTS refresh_families_wallet ON refresh_families(wallet);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BLOB PRIMARY KEY,
    family_id TEXT NOT NULL REFERENCES refresh_families(family_id),
    wallet TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL
);
CREATE TABLE IF NOT EXISTS blobs (
    cid TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    wallet TEXT NOT NULL,
    cid TEXT NOT NULL REFERENCES blobs(cid),
    pinned_at REAL NOT NULL,
    PRIMARY KEY (wallet, cid)
);
CREATE INDEX IF NOT EXISTS pins_cid ON pins(cid);
CREATE TABLE IF NOT EXISTS objects (
    wallet TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    cid TEXT NOT NULL REFERENCES blobs(cid),
    updated_at REAL NOT NULL,
    PRIMARY KEY (wallet, bucket, key)
);
CREATE INDEX IF NOT EXISTS objects_cid ON objects(cid);
CREATE TABLE IF NOT EXISTS used_upload_links (
    link_hash BLOB PRIMARY KEY,
    expires_at REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
"""


class RotateOutcome(Enum):
    """Result of presenting a refresh token."""

    ROTATED = "rotated"  # valid: marked used, a successor was stored
    UNKNOWN = "unknown"  # never issued here
    EXPIRED = "expired"
    REVOKED = "revoked"  # its family was revoked (logout, reuse, admin)
    REUSED = "reused"  # already rotated: the whole family is now revoked


@dataclass(frozen=True, slots=True)
class PinRow:
    cid: str
    size: int
    pinned_at: float


@dataclass(frozen=True, slots=True)
class ObjectRow:
    bucket: str
    key: str
    cid: str
    size: int
    updated_at: float


class SyncDB:
    """Synchronous data access; one instance per connection, used by one thread at a time."""

    def __init__(self, path: Path) -> None:
        try:
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database at {path}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc
        return result

    # -- roles ---------------------------------------------------------------------------------

    def set_role(self, wallet: str, role: str, now: float) -> None:
        self._tx(
            lambda c: c.execute(
                "INSERT INTO roles(wallet, role, registered_at) VALUES (?, ?, ?) "
                "ON CONFLICT(wallet) DO UPDATE SET role = excluded.role",
                (wallet, role, now),
            )
        )

    def get_role(self, wallet: str) -> str | None:
        row = self._tx(
            lambda c: c.execute("SELECT role FROM roles WHERE wallet = ?", (wallet,)).fetchone()
        )
        return None if row is None else str(row[0])

    def list_roles(self, limit: int, after: str) -> list[tuple[str, str]]:
        rows = self._tx(
            lambda c: c.execute(
                "SELECT wallet, role FROM roles WHERE wallet > ? ORDER BY wallet LIMIT ?",
                (after, limit),
            ).fetchall()
        )
        return [(str(w), str(r)) for w, r in rows]

    # -- refresh tokens ------------------------------------------------------------------------

    def new_family(self, wallet: str, token_hash: bytes, now: float, expires_at: float) -> str:
        family_id = secrets.token_hex(16)

        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO refresh_families(family_id, wallet, created_at) VALUES (?, ?, ?)",
                (family_id, wallet, now),
            )
            c.execute(
                "INSERT INTO refresh_tokens(token_hash, family_id, wallet, issued_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_hash, family_id, wallet, now, expires_at),
            )

        self._tx(tx)
        return family_id

    def rotate(
        self, old_hash: bytes, new_hash: bytes, now: float, expires_at: float
    ) -> tuple[RotateOutcome, str | None, str | None]:
        """Use a refresh token once. Returns (outcome, wallet, family_id)."""

        def tx(c: sqlite3.Connection) -> tuple[RotateOutcome, str | None, str | None]:
            row = c.execute(
                "SELECT t.family_id, t.wallet, t.expires_at, t.used_at, f.revoked_at "
                "FROM refresh_tokens t JOIN refresh_families f USING (family_id) "
                "WHERE t.token_hash = ?",
                (old_hash,),
            ).fetchone()
            if row is None:
                return RotateOutcome.UNKNOWN, None, None
            family_id, wallet, expires, used_at, revoked_at = row
            if revoked_at is not None:
                return RotateOutcome.REVOKED, wallet, family_id
            if used_at is not None:
                c.execute(
                    "UPDATE refresh_families SET revoked_at = ?, revoke_reason = 'reuse' "
                    "WHERE family_id = ?",
                    (now, family_id),
                )
                return RotateOutcome.REUSED, wallet, family_id
            if now >= expires:
                return RotateOutcome.EXPIRED, wallet, family_id
            c.execute("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?", (now, old_hash))
            c.execute(
                "INSERT INTO refresh_tokens(token_hash, family_id, wallet, issued_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (new_hash, family_id, wallet, now, expires_at),
            )
            return RotateOutcome.ROTATED, wallet, family_id

        return self._tx(tx)

    def revoke_token_family(self, token_hash: bytes, now: float, reason: str) -> bool:
        """Revoke the family of a refresh token; False if the token is unknown."""

        def tx(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "SELECT family_id FROM refresh_tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            if row is None:
                return False
            c.execute(
                "UPDATE refresh_families SET revoked_at = ?, revoke_reason = ? "
                "WHERE family_id = ? AND revoked_at IS NULL",
                (now, reason, row[0]),
            )
            return True

        return self._tx(tx)

    def revoke_family(self, family_id: str, now: float, reason: str) -> None:
        self._tx(
            lambda c: c.execute(
                "UPDATE refresh_families SET revoked_at = ?, revoke_reason = ? "
                "WHERE family_id = ? AND revoked_at IS NULL",
                (now, reason, family_id),
            )
        )

    def revoke_wallet(self, wallet: str, now: float, reason: str) -> int:
        cur = self._tx(
            lambda c: c.execute(
                "UPDATE refresh_families SET revoked_at = ?, revoke_reason = ? "
                "WHERE wallet = ? AND revoked_at IS NULL",
                (now, reason, wallet),
            )
        )
        return int(cur.rowcount)

    def family_revoked(self, family_id: str) -> bool:
        """True only for a known family that was revoked (unknown ones are not on any list)."""
        row = self._tx(
            lambda c: c.execute(
                "SELECT revoked_at FROM refresh_families WHERE family_id = ?", (family_id,)
            ).fetchone()
        )
        return row is not None and row[0] is not None

    def family_active(self, family_id: str) -> bool:
        row = self._tx(
            lambda c: c.execute(
                "SELECT revoked_at FROM refresh_families WHERE family_id = ?", (family_id,)
            ).fetchone()
        )
        return row is not None and row[0] is None

    # -- blobs, pins, objects ------------------------------------------------------------------

    @staticmethod
    def _usage(c: sqlite3.Connection, wallet: str) -> int:
        row = c.execute(
            "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE cid IN (SELECT cid FROM pins"
            " WHERE wallet = ? UNION SELECT cid FROM objects WHERE wallet = ?)",
            (wallet, wallet),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _holds(c: sqlite3.Connection, wallet: str, cid: str) -> bool:
        row = c.execute(
            "SELECT 1 FROM pins WHERE wallet = ? AND cid = ? "
            "UNION SELECT 1 FROM objects WHERE wallet = ? AND cid = ?",
            (wallet, cid, wallet, cid),
        ).fetchone()
        return row is not None

    @staticmethod
    def _check_quota(c: sqlite3.Connection, wallet: str, cid: str, size: int, quota: int) -> None:
        if SyncDB._holds(c, wallet, cid):
            return  # already counted once for this wallet
        if SyncDB._usage(c, wallet) + size > quota:
            raise QuotaExceeded("this upload would exceed the wallet's storage quota")

    def usage(self, wallet: str) -> int:
        return self._tx(lambda c: self._usage(c, wallet))

    def blob_size(self, cid: str) -> int | None:
        row = self._tx(
            lambda c: c.execute("SELECT size FROM blobs WHERE cid = ?", (cid,)).fetchone()
        )
        return None if row is None else int(row[0])

    def pin(self, wallet: str, cid: str, *, size: int | None, now: float, quota: int) -> int:
        """Pin ``cid`` for ``wallet`` (inserting the blob row when ``size`` is given).

        Returns the blob's size. Raises QuotaExceeded (nothing changed) or KeyError if the blob
        is unknown and ``size`` is None.
        """

        def tx(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT size FROM blobs WHERE cid = ?", (cid,)).fetchone()
            if row is None:
                if size is None:
                    raise KeyError(cid)
                blob_size = size
            else:
                blob_size = int(row[0])
            self._check_quota(c, wallet, cid, blob_size, quota)
            if row is None:
                c.execute(
                    "INSERT INTO blobs(cid, size, created_at) VALUES (?, ?, ?)", (cid, size, now)
                )
            c.execute(
                "INSERT OR IGNORE INTO pins(wallet, cid, pinned_at) VALUES (?, ?, ?)",
                (wallet, cid, now),
            )
            return blob_size

        return self._tx(tx)

    def unpin(self, wallet: str, cid: str) -> bool:
        cur = self._tx(
            lambda c: c.execute("DELETE FROM pins WHERE wallet = ? AND cid = ?", (wallet, cid))
        )
        return bool(cur.rowcount)

    def release(self, cid: str) -> bool:
        """Drop the blob row if nothing references ``cid``; True means: delete the bytes."""

        def tx(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "SELECT 1 FROM pins WHERE cid = ? UNION SELECT 1 FROM objects WHERE cid = ?",
                (cid, cid),
            ).fetchone()
            if row is not None:
                return False
            c.execute("DELETE FROM blobs WHERE cid = ?", (cid,))
            return True

        return self._tx(tx)

    def is_pinned_by(self, wallet: str, cid: str) -> bool:
        return self._tx(lambda c: self._holds(c, wallet, cid))

    def list_pins(self, wallet: str, limit: int, after: str) -> list[PinRow]:
        rows = self._tx(
            lambda c: c.execute(
                "SELECT p.cid, b.size, p.pinned_at FROM pins p JOIN blobs b USING (cid) "
                "WHERE p.wallet = ? AND p.cid > ? ORDER BY p.cid LIMIT ?",
                (wallet, after, limit),
            ).fetchall()
        )
        return [PinRow(str(c), int(s), float(t)) for c, s, t in rows]

    # -- upload links (single use) -----------------------------------------------------------------

    def claim_upload_link(self, link_hash: bytes, expires_at: float, now: float) -> bool:
        """Take the link for one upload: False when it is in use or was used (until it expires,
        after which its signature check refuses it anyway)."""

        def tx(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM used_upload_links WHERE expires_at <= ?", (now,))
            cur = c.execute("INSERT OR IGNORE INTO used_upload_links (link_hash, expires_at) VALUES (?, ?)",
                            (link_hash, expires_at))
            return cur.rowcount == 1

        return self._tx(tx)

    def finish_upload_link(self, link_hash: bytes, *, stored: bool) -> None:
        """The upload ended: the link stays used when it stored its object, else it is free again
        (a provider whose upload broke off may try again)."""
        if stored:
            self._tx(lambda c: c.execute("UPDATE used_upload_links SET done = 1 WHERE link_hash = ?", (link_hash,)))
        else:
            self._tx(lambda c: c.execute("DELETE FROM used_upload_links WHERE link_hash = ? AND done = 0",
                                         (link_hash,)))

    def put_object(
        self, wallet: str, bucket: str, key: str, *, cid: str, size: int, now: float, quota: int
    ) -> str | None:
        """Point (wallet, bucket, key) at ``cid``; returns the cid it pointed at before."""

        def tx(c: sqlite3.Connection) -> str | None:
            old = c.execute(
                "SELECT cid FROM objects WHERE wallet = ? AND bucket = ? AND key = ?",
                (wallet, bucket, key),
            ).fetchone()
            self._check_quota(c, wallet, cid, size, quota)
            c.execute(
                "INSERT OR IGNORE INTO blobs(cid, size, created_at) VALUES (?, ?, ?)",
                (cid, size, now),
            )
            c.execute(
                "INSERT INTO objects(wallet, bucket, key, cid, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(wallet, bucket, key) DO UPDATE SET cid = excluded.cid,"
                " updated_at = excluded.updated_at",
                (wallet, bucket, key, cid, now),
            )
            return None if old is None or old[0] == cid else str(old[0])

        return self._tx(tx)

    def get_object(self, wallet: str, bucket: str, key: str) -> ObjectRow | None:
        row = self._tx(
            lambda c: c.execute(
                "SELECT o.cid, b.size, o.updated_at FROM objects o JOIN blobs b USING (cid) "
                "WHERE o.wallet = ? AND o.bucket = ? AND o.key = ?",
                (wallet, bucket, key),
            ).fetchone()
        )
        return None if row is None else ObjectRow(bucket, key, str(row[0]), int(row[1]), row[2])

    def delete_object(self, wallet: str, bucket: str, key: str) -> str | None:
        def tx(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT cid FROM objects WHERE wallet = ? AND bucket = ? AND key = ?",
                (wallet, bucket, key),
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "DELETE FROM objects WHERE wallet = ? AND bucket = ? AND key = ?",
                (wallet, bucket, key),
            )
            return str(row[0])

        return self._tx(tx)

    def list_objects(
        self, wallet: str, bucket: str, *, prefix: str, limit: int, after: str
    ) -> list[ObjectRow]:
        rows = self._tx(
            lambda c: c.execute(
                "SELECT o.key, o.cid, b.size, o.updated_at FROM objects o JOIN blobs b USING (cid)"
                " WHERE o.wallet = ? AND o.bucket = ? AND substr(o.key, 1, ?) = ? AND o.key > ?"
                " ORDER BY o.key LIMIT ?",
                (wallet, bucket, len(prefix), prefix, after, limit),
            ).fetchall()
        )
        return [ObjectRow(bucket, str(k), str(c), int(s), float(t)) for k, c, s, t in rows]


class AsyncDB:
    """Runs ``SyncDB`` methods in a worker thread, one at a time (CapacityLimiter(1))."""

    def __init__(self, sync: SyncDB) -> None:
        self.sync = sync
        # One connection, so one thread at a time; this also serializes transactions.
        self._limiter = anyio.CapacityLimiter(1)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def close(self) -> None:
        await self.run(self.sync.close)
