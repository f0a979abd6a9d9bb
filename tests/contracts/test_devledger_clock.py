"""The development ledger's clock only moves forward, across restarts (issue 16 item 2).

A ledger at x60 is restarted mid-rental (a new ``DevLedger`` on the same database, as a restarted
bootstrap node opens it): its clock continues from where it stopped (the downtime does not count),
every action is stamped no earlier than the one before, and the rental is billed exactly the
ledger minutes it ran between its start and its close.
"""

from __future__ import annotations

from pathlib import Path

from dgpu.contracts.devledger.messages import CloseRequest, FaucetRequest, OpenRequest, StartRequest
from dgpu.contracts.devledger.model import DevLedger, DevLedgerConfig, escrow_address

from .conftest import KEYS

RENTER = KEYS["renter"].public_key.wallet
PROVIDER = KEYS["provider"].public_key.wallet
LEDGER = "clock"
SPEED = 60
RATE = 1_000
S = 1_000_000_000  # ns per second


class Wall:
    """A wall clock the test moves (ns), like ``time.time_ns``."""

    def __init__(self, start_s: int) -> None:
        self.ns = start_s * S

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * S)


def _open(path: Path, wall: Wall) -> DevLedger:
    return DevLedger(DevLedgerConfig(db_path=path, ledger_id=LEDGER, clock_speed=SPEED, faucet_interval_s=0),
                     wall_ns=wall)


def test_restart_at_x60_mid_rental_keeps_time_monotonic_and_billing_exact(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    wall = Wall(1_700_000_000)
    ledger = _open(path, wall)
    t0 = ledger.clock.now()
    times = [ledger.execute(RENTER, FaucetRequest(ledger=LEDGER, amount=10_000_000)).now]
    times += [ledger.execute(RENTER, OpenRequest(ledger=LEDGER, provider=PROVIDER, rental_id=1, rate_per_minute=RATE,
                                       max_minutes=120, start_deadline=t0 + 3600)).now]
    address = escrow_address(RENTER, PROVIDER, 1)
    times += [ledger.execute(PROVIDER, StartRequest(ledger=LEDGER, escrow=address)).now]
    started = ledger.escrow(address)[0].started_at
    assert started is not None
    wall.advance(30)  # 30 wall seconds = 30 ledger minutes
    stopped_at = ledger.escrow(address)[2]  # a read shows (and keeps) the clock
    ledger.close()  # the bootstrap node stops ...

    wall.advance(10)  # ... for 10 wall seconds, which the ledger does not count
    ledger = _open(path, wall)
    assert ledger.clock.now() == stopped_at
    wall.advance(15)  # 15 more ledger minutes
    times += [ledger.execute(RENTER, CloseRequest(ledger=LEDGER, escrow=address)).now]
    closed, vault, _ = ledger.escrow(address)
    assert times == sorted(times) and times[-1] - started == 45 * 60
    assert closed.claimed_minutes == 45 and closed.paid + closed.fee_paid == 45 * RATE
    assert closed.refunded == (120 - 45) * RATE and vault == 0
    ledger.audit()
    ledger.close()


def test_a_wall_clock_set_back_never_moves_the_ledger_back(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    wall = Wall(1_700_000_000)
    ledger = _open(path, wall)
    times = [ledger.execute(RENTER, FaucetRequest(ledger=LEDGER, amount=5)).now]
    wall.advance(100)
    before = ledger.clock.now()
    wall.advance(-3600)  # NTP steps the wall clock back an hour, in the running process ...
    assert ledger.clock.now() == before
    times += [ledger.execute(PROVIDER, FaucetRequest(ledger=LEDGER, amount=5)).now]
    ledger.close()
    ledger = _open(path, wall)  # ... and across a restart
    assert ledger.clock.now() >= before
    times += [ledger.execute(RENTER, OpenRequest(ledger=LEDGER, provider=PROVIDER, rental_id=1, rate_per_minute=1,
                                                 max_minutes=1, start_deadline=before + 600)).now]
    assert times == sorted(times) and times[-1] >= before
    ledger.close()
