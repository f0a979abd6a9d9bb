"""SyncDB: refresh rotation, reuse detection, quota accounting and reference counting."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgpu.bootstrap.db import RotateOutcome, SyncDB
from dgpu.bootstrap.errors import QuotaExceeded

CID_A = "sha256-" + "a" * 64
CID_B = "sha256-" + "b" * 64


def test_rotation_and_reuse_revokes_family(tmp_path: Path) -> None:
    db = SyncDB(tmp_path / "db.sqlite3")
    fam = db.new_family("W", b"t1", now=0.0, expires_at=100.0)
    assert db.rotate(b"t1", b"t2", 1.0, 100.0) == (RotateOutcome.ROTATED, "W", fam)
    assert db.rotate(b"t1", b"t3", 2.0, 100.0) == (RotateOutcome.REUSED, "W", fam)
    assert not db.family_active(fam)
    assert db.rotate(b"t2", b"t4", 3.0, 100.0)[0] is RotateOutcome.REVOKED
    assert db.rotate(b"nope", b"t5", 3.0, 100.0)[0] is RotateOutcome.UNKNOWN
    fam2 = db.new_family("W", b"u1", now=0.0, expires_at=10.0)
    assert db.rotate(b"u1", b"u2", 10.0, 20.0)[0] is RotateOutcome.EXPIRED
    assert db.family_active(fam2)
    assert db.revoke_wallet("W", 11.0, "admin") == 1
    assert not db.family_active(fam2)


def test_quota_counts_distinct_cids_per_wallet(tmp_path: Path) -> None:
    db = SyncDB(tmp_path / "db.sqlite3")
    db.pin("W", CID_A, size=60, now=0.0, quota=100)
    db.pin("W", CID_A, size=60, now=0.0, quota=100)  # same cid: no double count
    assert db.put_object("W", "bkt", "k", cid=CID_A, size=60, now=0.0, quota=100) is None
    assert db.usage("W") == 60
    with pytest.raises(QuotaExceeded):
        db.pin("W", CID_B, size=41, now=0.0, quota=100)
    assert db.blob_size(CID_B) is None  # nothing recorded by the refused pin
    assert db.pin("V", CID_A, size=None, now=0.0, quota=100) == 60
    with pytest.raises(KeyError):
        db.pin("V", CID_B, size=None, now=0.0, quota=100)


def test_release_only_when_unreferenced(tmp_path: Path) -> None:
    db = SyncDB(tmp_path / "db.sqlite3")
    db.pin("W", CID_A, size=1, now=0.0, quota=10)
    db.put_object("V", "bkt", "k", cid=CID_A, size=1, now=0.0, quota=10)
    assert db.unpin("W", CID_A)
    assert not db.release(CID_A)  # V's object still points at it
    assert db.delete_object("V", "bkt", "k") == CID_A
    assert db.release(CID_A)
    assert db.blob_size(CID_A) is None
    assert not db.unpin("W", CID_A)
