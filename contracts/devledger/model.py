"""The development ledger's state: token accounts and escrows in one SQLite file.

**It holds no real value.** It exists so a local network runs end to end without Solana; its
tokens come from a faucet and are worth nothing.

Theory of operation: the escrow rules are not re-implemented here. Every instruction loads the
escrow row into a :class:`dgpu.protocol.escrow.Escrow`, calls the pure function of
``dgpu.protocol.escrow`` with the *verified signer* as the actor and the ledger's clock as
``now``, then applies the returned transfers to token accounts and stores the new escrow, all in
one SQLite transaction. A refused instruction (``EscrowError``, insufficient funds) is rolled back
to a savepoint, so it changes nothing but still consumes its nonce and is journalled.

Token accounts are keyed by owner address: a wallet's account, the treasury's, and each escrow's
vault (owned by the escrow address, like the ATA of the program's PDA). Invariants after every
committed transaction: no balance is negative; the sum of all balances equals the sum of all
faucet mints (recorded in ``mints``); each open escrow's vault holds at least
``deposited - paid - fee_paid - refunded`` (more when someone sent tokens to the vault address
before ``open``: that dust goes to the renter at the exit) and a closed one's holds 0. The total
supply is capped at ``MAX_SUPPLY`` (< 2**63), so every amount fits SQLite's signed 64-bit
integers.

Concurrency: one ``sqlite3`` connection guarded by a ``threading.Lock``; the server calls into it
from one worker thread at a time (a limiter of 1), tests call it directly. Replay protection is
persistent: (signer, nonce) pairs live in the ``nonces`` table until their envelope expires, so a
restart does not reopen a replay window; the table is bounded (``max_nonces``) and fails closed.

Two clocks: envelopes are checked against the wall clock (they are signed with it); instructions
run at the *ledger* clock (:class:`LedgerClock`), which a development network may accelerate
(``clock_speed``) and a ledger in test mode may set. Solana's clock is never touched this way.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from dgpu.protocol import escrow as esc
from dgpu.protocol.envelope import open_envelope
from dgpu.protocol.errors import EscrowError, RemoteProtocolError
from dgpu.protocol.ids import MAX_ENVELOPE_TTL_S
from dgpu.protocol.keys import PublicKey, b58encode

from ..errors import (
    EscrowNotFound,
    EscrowRefused,
    InsufficientFunds,
    LedgerError,
    ProgramError,
    RequestRejected,
)
from .messages import (
    ESCROW_ACTIONS,
    REQUEST_ADAPTER,
    FaucetRequest,
    LedgerRequest,
    OpenRequest,
    TopUpRequest,
    TransferRequest,
)

__all__ = [
    "MAX_SUPPLY",
    "NOTICE",
    "DevLedger",
    "DevLedgerConfig",
    "LedgerClock",
    "TxOutcome",
    "escrow_address",
]

log = logging.getLogger(__name__)
#: meta keys of the persisted ledger clock: the last ledger time stamped or shown, and its speed
_CLOCK_KEY = "clock_now"
_SPEED_KEY = "clock_speed"
#: the total of all faucet mints never exceeds this, so every amount fits a signed 64-bit integer
MAX_SUPPLY = 2**62
NOTICE = (
    "Development ledger: its tokens come from a faucet and hold no real value. "
    "Nothing here is on Solana."
)
_ACTIONS: dict[str, Callable[[esc.Escrow, str, int], esc.Outcome]] = {
    "start": esc.start,
    "claim": esc.claim,
    "close": esc.close,
    "settle_expired": esc.settle_expired,
    "refund_unstarted": esc.refund_unstarted,
}


class DevLedgerConfig(BaseModel):
    """How one development ledger runs; built once (from the bootstrap node's settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db_path: Path
    #: named in every signed request, so requests cannot be replayed against another ledger
    ledger_id: str = Field(default="dgpu-dev", pattern=r"^[\w.:-]{1,64}$")
    decimals: int = Field(default=6, ge=0, le=18)
    fee_bps: int = Field(default=500, ge=0, le=esc.MAX_FEE_BPS)
    #: wallet that receives the fee; derived from ledger_id when not given
    treasury: str | None = None
    #: blocks `open` only, like Config.paused on chain
    paused: bool = False
    #: the ledger clock runs this many times faster than the wall clock (demos); Solana never does
    clock_speed: int = Field(default=1, ge=1, le=100_000)
    #: allows POST /admin/time (tests only)
    test_mode: bool = False
    #: most base units one faucet request may mint (default 1000 tokens of 6 decimals)
    faucet_max: int = Field(default=1_000_000_000, ge=0, le=MAX_SUPPLY)
    #: a wallet may use the faucet once per this many wall-clock seconds
    faucet_interval_s: int = Field(default=3600, ge=0)
    #: largest request body accepted, in bytes (checked before decoding)
    max_body_bytes: int = Field(default=4096, ge=512, le=65536)
    #: bound of the persistent replay table; full means requests are refused (fail closed)
    max_nonces: int = Field(default=200_000, ge=1)


def _derive(label: bytes, *parts: bytes) -> str:
    return b58encode(hashlib.sha256(b"dgpu/devledger/" + label + b"\0" + b"".join(parts)).digest())


def escrow_address(renter: str, provider: str, rental_id: int) -> str:
    """The escrow's address: base58(sha256("dgpu/devledger/escrow\\0" + renter + provider + rental_id u64 LE))."""
    return _derive(
        b"escrow",
        PublicKey.from_wallet(renter).raw,
        PublicKey.from_wallet(provider).raw,
        rental_id.to_bytes(8, "little"),
    )


class LedgerClock:
    """The ledger's clock: wall time, optionally accelerated, optionally set (test mode).

    ``now = anchor + (wall - wall_anchor) * speed`` in whole seconds, never less than a value it
    returned before (a wall clock stepped back by NTP does not move it back); ``start`` anchors
    it at a ledger time (a restarted ledger continues from its persisted clock, see
    :class:`DevLedger`) instead of the wall time. ``set(t, frozen=True)`` pins it at ``t`` (test
    mode only; the one way it may go backwards, which the escrow rules tolerate).
    """

    def __init__(self, speed: int = 1, wall_ns: Callable[[], int] = time.time_ns, *,
                 start: int | None = None) -> None:
        self._speed = speed
        self._wall_ns = wall_ns
        self._lock = threading.Lock()
        self._wall_anchor = wall_ns()
        self._anchor = self._wall_anchor // 1_000_000_000 if start is None else start
        self._frozen = False
        self._last = self._anchor

    @property
    def speed(self) -> int:
        return self._speed

    def now(self) -> int:
        with self._lock:
            if self._frozen:
                return self._anchor
            t = self._anchor + (self._wall_ns() - self._wall_anchor) * self._speed // 1_000_000_000
            self._last = max(self._last, t)
            return self._last

    def set(self, now: int, *, frozen: bool = True) -> None:
        with self._lock:
            self._wall_anchor = self._wall_ns()
            self._anchor = now
            self._last = now
            self._frozen = frozen


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What one applied request did (amounts in base units, at ledger time ``now``)."""

    tx: str
    action: str
    now: int
    escrow: str | None = None
    renter: str | None = None
    provider: str | None = None
    rental_id: int | None = None
    deposited: int = 0
    paid: int = 0
    fee: int = 0
    refunded: int = 0
    minted: int = 0
    #: signer -> ``destination`` (transfer)
    transferred: int = 0
    destination: str | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    owner TEXT PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS escrows (
    address TEXT PRIMARY KEY,
    renter TEXT NOT NULL, provider TEXT NOT NULL, mint TEXT NOT NULL,
    rental_id TEXT NOT NULL,               -- u64, as decimal text
    rate_per_minute INTEGER NOT NULL, max_minutes INTEGER NOT NULL, deposited INTEGER NOT NULL,
    fee_bps INTEGER NOT NULL, start_deadline INTEGER NOT NULL, started_at INTEGER,
    claimed_minutes INTEGER NOT NULL, paid INTEGER NOT NULL, fee_paid INTEGER NOT NULL,
    refunded INTEGER NOT NULL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    signer TEXT NOT NULL, nonce TEXT NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (signer, nonce)
);
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at);
CREATE TABLE IF NOT EXISTS faucet (wallet TEXT PRIMARY KEY, last_at INTEGER NOT NULL);
-- the highest rental id each renter opened (u64 as decimal text): ids only increase, as on chain
CREATE TABLE IF NOT EXISTS renters (renter TEXT PRIMARY KEY, last_rental_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mints (
    seq INTEGER PRIMARY KEY, tx TEXT NOT NULL, wallet TEXT NOT NULL, amount INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY, tx TEXT NOT NULL, at INTEGER NOT NULL, signer TEXT NOT NULL,
    action TEXT NOT NULL, escrow TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS transfers (
    seq INTEGER PRIMARY KEY, tx TEXT NOT NULL, source TEXT NOT NULL, destination TEXT NOT NULL,
    amount INTEGER NOT NULL
);
"""


def _refused(exc: EscrowError) -> EscrowRefused:
    return EscrowRefused(exc.code, str(exc).removeprefix(exc.code.value).removeprefix(": "))


class DevLedger:
    """The development ledger's state machine over SQLite (synchronous; see the module docstring)."""

    def __init__(
        self,
        config: DevLedgerConfig,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        clock: LedgerClock | None = None,
    ) -> None:
        self.config = config
        self._wall_ns = wall_ns
        self._lock = threading.Lock()
        config.db_path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        self._db = sqlite3.connect(str(config.db_path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.mint = _derive(b"mint", config.ledger_id.encode())
        self.treasury = config.treasury or _derive(b"treasury", config.ledger_id.encode())
        with self._transaction():
            stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not stored:
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("ledger_id", config.ledger_id), ("mint", self.mint),
                     ("decimals", str(config.decimals))],
                )
            elif stored.get("ledger_id") != config.ledger_id or stored.get("decimals") != str(config.decimals):
                raise ValueError(
                    f"{config.db_path} holds ledger {stored.get('ledger_id')!r} with "
                    f"{stored.get('decimals')} decimals; the config says {config.ledger_id!r} / "
                    f"{config.decimals}"
                )
        self.decimals = config.decimals
        # the clock continues from where it stopped: the last time it stamped or showed (persisted
        # with every action, and with reads at most a wall second apart); the downtime does not
        # count, so a job that ends as the ledger host dies is not billed for the ledger's outage
        start = int(stored[_CLOCK_KEY]) if _CLOCK_KEY in stored else None
        self._persisted = start if start is not None else 0
        self.clock = clock if clock is not None else LedgerClock(config.clock_speed, wall_ns, start=start)
        if stored.get(_SPEED_KEY, str(config.clock_speed)) != str(config.clock_speed):
            log.warning("ledger clock speed changes from x%s to x%d", stored[_SPEED_KEY], config.clock_speed)

    def _persist_clock(self, db: sqlite3.Connection, now: int) -> None:
        """Remember the clock, so a restart starts no earlier than ``now`` (inside a transaction,
        or alone: one statement is its own)."""
        db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                       [(_CLOCK_KEY, str(now)), (_SPEED_KEY, str(self.clock.speed))])
        self._persisted = now

    def _shown(self, now: int) -> int:
        """A read shows ``now`` (under the lock): persisted when a wall second has passed since the
        last time, so a restart never shows an earlier time than a client saw (within that second)."""
        if now - self._persisted >= self.clock.speed:
            self._persist_clock(self._db, now)
        return now

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _wall_s(self) -> int:
        return self._wall_ns() // 1_000_000_000

    def _balance(self, owner: str) -> int:
        row = self._db.execute("SELECT balance FROM accounts WHERE owner = ?", (owner,)).fetchone()
        return int(row[0]) if row else 0

    def _credit(self, owner: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO accounts (owner, balance) VALUES (?, ?) "
            "ON CONFLICT (owner) DO UPDATE SET balance = balance + excluded.balance",
            (owner, amount),
        )

    def _move(self, tx: str, source: str, destination: str, amount: int) -> None:
        if amount <= 0:
            return
        held = self._balance(source)
        if held < amount:
            raise InsufficientFunds(f"{source} holds {held}, needs {amount}")
        self._db.execute("UPDATE accounts SET balance = balance - ? WHERE owner = ?", (amount, source))
        self._credit(destination, amount)
        self._db.execute(
            "INSERT INTO transfers (tx, source, destination, amount) VALUES (?, ?, ?, ?)",
            (tx, source, destination, amount),
        )

    def _load(self, address: str) -> esc.Escrow:
        row = self._db.execute(
            "SELECT renter, provider, mint, rental_id, rate_per_minute, max_minutes, deposited, "
            "fee_bps, start_deadline, started_at, claimed_minutes, paid, fee_paid, refunded, status "
            "FROM escrows WHERE address = ?",
            (address,),
        ).fetchone()
        if row is None:
            raise EscrowNotFound(f"no escrow at {address}")
        return esc.Escrow(
            renter=row[0], provider=row[1], mint=row[2], rental_id=int(row[3]),
            rate_per_minute=row[4], max_minutes=row[5], deposited=row[6], fee_bps=row[7],
            start_deadline=row[8], started_at=row[9], claimed_minutes=row[10], paid=row[11],
            fee_paid=row[12], refunded=row[13], status=esc.EscrowStatus(row[14]),
        )

    def _store(self, address: str, e: esc.Escrow) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO escrows (address, renter, provider, mint, rental_id, rate_per_minute, "
            "max_minutes, deposited, fee_bps, start_deadline, started_at, claimed_minutes, paid, "
            "fee_paid, refunded, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (address, e.renter, e.provider, e.mint, str(e.rental_id), e.rate_per_minute,
             e.max_minutes, e.deposited, e.fee_bps, e.start_deadline, e.started_at,
             e.claimed_minutes, e.paid, e.fee_paid, e.refunded, e.status.value),
        )

    # -- requests ----------------------------------------------------------------------------

    def submit(self, data: bytes) -> TxOutcome:
        """Verify a signed envelope and apply its request; raises a ``ContractsError``.

        Check order: size, envelope, schema, signature, validity window (wall clock, TTL at most
        ``MAX_ENVELOPE_TTL_S``), ledger id, then replay (persistent) and the instruction itself.
        Anything refused before the replay check leaves no trace; a refused instruction consumes
        its nonce and changes nothing else.
        """
        adapter: TypeAdapter[LedgerRequest] = REQUEST_ADAPTER
        wall = self._wall_s()
        try:
            opened = open_envelope(data, adapter, now=wall, max_bytes=self.config.max_body_bytes,
                                   max_ttl=MAX_ENVELOPE_TTL_S)
        except RemoteProtocolError as exc:
            raise RequestRejected(exc.reject_code, str(exc)) from None
        request = opened.message
        if request.ledger != self.config.ledger_id:
            raise RequestRejected("wrong_ledger", f"request is for ledger {request.ledger!r}")
        tx = hashlib.sha256(data).hexdigest()
        signer = opened.signer.wallet
        failure: LedgerError | None = None
        with self._transaction() as db:
            db.execute("DELETE FROM nonces WHERE expires_at <= ?", (wall,))
            if db.execute("SELECT 1 FROM nonces WHERE signer = ? AND nonce = ?",
                          (signer, opened.nonce)).fetchone():
                raise RequestRejected("replay", f"replayed request (nonce {opened.nonce[:8]}…)")
            (count,) = db.execute("SELECT COUNT(*) FROM nonces").fetchone()
            if count >= self.config.max_nonces:
                raise RequestRejected("replay", "replay table is full; refusing rather than risking a replay")
            db.execute("INSERT INTO nonces (signer, nonce, expires_at) VALUES (?, ?, ?)",
                       (signer, opened.nonce, opened.expires_at))
            now = self.clock.now()
            self._persist_clock(db, now)
            db.execute("SAVEPOINT apply")
            try:
                outcome = self._execute(tx, signer, request, now, wall)
            except LedgerError as exc:
                db.execute("ROLLBACK TO apply")
                failure = exc
            except RequestRejected:
                db.execute("ROLLBACK TO apply")
                raise
            db.execute("RELEASE apply")
            db.execute(
                "INSERT INTO journal (tx, at, signer, action, escrow, error) VALUES (?, ?, ?, ?, ?, ?)",
                (tx, now, signer, request.type.removeprefix("devledger_"),
                 getattr(request, "escrow", None),
                 None if failure is None else str(failure)),
            )
        if failure is not None:
            raise failure
        return outcome

    def execute(self, actor: str, request: LedgerRequest, *, now: int | None = None) -> TxOutcome:
        """Apply ``request`` as ``actor`` without an envelope (in-process tests and tools only)."""
        when = self.clock.now() if now is None else now
        tx = hashlib.sha256(f"{actor}/{request.model_dump_json()}/{when}".encode()).hexdigest()
        with self._transaction() as db:
            if now is None:  # only the clock's own times are remembered
                self._persist_clock(db, when)
            return self._execute(tx, actor, request, when, self._wall_s())

    def _execute(self, tx: str, actor: str, request: LedgerRequest, now: int, wall: int) -> TxOutcome:
        if isinstance(request, FaucetRequest):
            return self._faucet(tx, actor, request.amount, now, wall)
        if isinstance(request, TransferRequest):
            return self._transfer(tx, actor, request.to, request.amount, now)
        if isinstance(request, OpenRequest):
            return self._open(tx, actor, request, now)
        action = ESCROW_ACTIONS[request.type]
        address = request.escrow
        before = self._load(address)
        try:
            if isinstance(request, TopUpRequest):
                outcome = esc.top_up(before, actor, now, request.extra_minutes)
            else:
                outcome = _ACTIONS[action](before, actor, now)
        except EscrowError as exc:
            raise _refused(exc) from None
        return self._apply(tx, action, address, outcome, now)

    def _open(self, tx: str, actor: str, request: OpenRequest, now: int) -> TxOutcome:
        if request.provider == actor:
            raise ProgramError("SameParty", "renter and provider must be different keys")
        address = escrow_address(actor, request.provider, request.rental_id)
        try:
            outcome = esc.open_escrow(
                renter=actor, provider=request.provider, mint=self.mint, rental_id=request.rental_id,
                rate_per_minute=request.rate_per_minute, max_minutes=request.max_minutes,
                start_deadline=request.start_deadline, fee_bps=self.config.fee_bps, now=now,
                paused=self.config.paused, last_rental_id=self._last_rental_id(actor),
            )
        except EscrowError as exc:
            raise _refused(exc) from None
        if self._db.execute("SELECT 1 FROM escrows WHERE address = ?", (address,)).fetchone():
            raise ProgramError("AccountInUse", f"escrow {address} already exists")  # ids only increase
        self._db.execute("INSERT OR REPLACE INTO renters (renter, last_rental_id) VALUES (?, ?)",
                         (actor, str(request.rental_id)))
        return self._apply(tx, "open", address, outcome, now)

    def _last_rental_id(self, renter: str) -> int:
        row = self._db.execute("SELECT last_rental_id FROM renters WHERE renter = ?", (renter,)).fetchone()
        return int(row[0]) if row else 0

    def _apply(self, tx: str, action: str, address: str, outcome: esc.Outcome, now: int) -> TxOutcome:
        e = outcome.escrow
        owners = {esc.Party.RENTER: e.renter, esc.Party.PROVIDER: e.provider,
                  esc.Party.TREASURY: self.treasury, esc.Party.VAULT: address}
        moved = {"deposited": 0, "paid": 0, "fee": 0, "refunded": 0}
        for t in outcome.transfers:
            self._move(tx, owners[t.source], owners[t.destination], t.amount)
            key = {esc.Party.VAULT: "deposited", esc.Party.PROVIDER: "paid",
                   esc.Party.TREASURY: "fee", esc.Party.RENTER: "refunded"}[t.destination]
            moved[key] += t.amount
        # Dust sent to the vault address before `open` (anyone may) is not accounted; an exit
        # hands it to the renter without counting it as refunded, as the program does.
        for t in esc.sweep_dust(e, self._balance(address)):
            self._move(tx, owners[t.source], owners[t.destination], t.amount)
        self._store(address, e)
        vault = self._balance(address)
        short = vault < e.vault if e.status is esc.EscrowStatus.OPEN else vault != 0
        if short:  # cannot happen unless the rules and this adapter disagree
            raise AssertionError(f"vault of {address} holds {vault}, accounting says {e.vault}")
        return TxOutcome(tx=tx, action=action, now=now, escrow=address, renter=e.renter,
                         provider=e.provider, rental_id=e.rental_id, deposited=moved["deposited"],
                         paid=moved["paid"], fee=moved["fee"], refunded=moved["refunded"])

    def _faucet(self, tx: str, wallet: str, amount: int, now: int, wall: int) -> TxOutcome:
        if not 0 < amount <= self.config.faucet_max:
            raise RequestRejected("faucet_limit", f"the faucet gives 1..{self.config.faucet_max} base units")
        row = self._db.execute("SELECT last_at FROM faucet WHERE wallet = ?", (wallet,)).fetchone()
        if row is not None and wall - int(row[0]) < self.config.faucet_interval_s:
            raise RequestRejected("faucet_rate_limited",
                                  f"one faucet request per {self.config.faucet_interval_s} s per wallet")
        if self._supply() + amount > MAX_SUPPLY:
            raise RequestRejected("faucet_limit", "the development supply cap is reached")
        self._db.execute("INSERT OR REPLACE INTO faucet (wallet, last_at) VALUES (?, ?)", (wallet, wall))
        self._db.execute("INSERT INTO mints (tx, wallet, amount, at) VALUES (?, ?, ?, ?)",
                         (tx, wallet, amount, now))
        self._credit(wallet, amount)
        return TxOutcome(tx=tx, action="faucet", now=now, minted=amount)

    def _transfer(self, tx: str, actor: str, to: str, amount: int, now: int) -> TxOutcome:
        if amount <= 0:
            raise RequestRejected("invalid_request", "a transfer moves at least 1 base unit")
        if to == actor:
            raise ProgramError("SameParty", "a transfer needs a different destination")
        if self._db.execute("SELECT 1 FROM escrows WHERE address = ?", (to,)).fetchone():
            # vaults move only through escrow instructions, so their accounting stays exact
            raise ProgramError("InvalidDestination", "tokens cannot be sent to an escrow vault")
        self._move(tx, actor, to, amount)
        return TxOutcome(tx=tx, action="transfer", now=now, transferred=amount, destination=to)

    def _supply(self) -> int:
        (total,) = self._db.execute("SELECT COALESCE(SUM(amount), 0) FROM mints").fetchone()
        return int(total)

    # -- reads -------------------------------------------------------------------------------

    def balance(self, owner: str) -> int:
        with self._lock:
            return self._balance(owner)

    def last_rental_id(self, renter: str) -> int:
        """The highest rental id ``renter`` opened (0 if none): its next ``open`` needs a higher one."""
        with self._lock:
            return self._last_rental_id(renter)

    def escrow(self, address: str) -> tuple[esc.Escrow, int, int]:
        """(escrow, vault balance, ledger now); raises :class:`EscrowNotFound`."""
        with self._lock:
            return self._load(address), self._balance(address), self._shown(self.clock.now())

    def view(self, address: str) -> dict[str, Any]:
        """The JSON view of one escrow (what ``GET /escrows/{address}`` answers)."""
        e, vault, now = self.escrow(address)
        return {
            "address": address, "renter": e.renter, "provider": e.provider, "mint": e.mint,
            "rental_id": e.rental_id, "rate_per_minute": e.rate_per_minute,
            "max_minutes": e.max_minutes, "deposited": e.deposited, "fee_bps": e.fee_bps,
            "start_deadline": e.start_deadline, "started_at": e.started_at,
            "claimed_minutes": e.claimed_minutes, "paid": e.paid, "fee_paid": e.fee_paid,
            "refunded": e.refunded, "status": e.status.value, "vault_balance": vault, "now": now,
            "accrued_minutes": esc.accrued_minutes(e, now), "expires_at": esc.expires_at(e),
        }

    def stats(self) -> dict[str, Any]:
        """Totals for audits and benchmarks: supply, sum of balances, journal counts per action."""
        with self._lock:
            supply = self._supply()
            (total,) = self._db.execute("SELECT COALESCE(SUM(balance), 0) FROM accounts").fetchone()
            counts = dict(self._db.execute(
                "SELECT action, COUNT(*) FROM journal GROUP BY action").fetchall())
            (failed,) = self._db.execute("SELECT COUNT(*) FROM journal WHERE error IS NOT NULL").fetchone()
            (escrows,) = self._db.execute("SELECT COUNT(*) FROM escrows").fetchone()
        return {"supply": supply, "total_balances": int(total), "transactions": counts,
                "failed": failed, "escrows": escrows}

    def audit(self) -> None:
        """Raise ``AssertionError`` unless conservation holds globally and for every escrow."""
        stats = self.stats()
        if stats["supply"] != stats["total_balances"]:
            raise AssertionError(f"balances sum to {stats['total_balances']}, minted {stats['supply']}")
        with self._lock:
            rows = self._db.execute("SELECT address FROM escrows").fetchall()
            for (address,) in rows:
                e = self._load(address)
                vault = self._balance(address)
                if e.status is esc.EscrowStatus.OPEN and vault < e.vault:
                    raise AssertionError(f"open escrow {address}: vault {vault} < {e.vault}")
                if e.status is esc.EscrowStatus.CLOSED and (
                    vault != 0 or e.paid + e.fee_paid + e.refunded != e.deposited
                ):
                    raise AssertionError(f"closed escrow {address} does not balance")

    def set_time(self, now: int, *, frozen: bool = True) -> None:
        """Test mode only: set the ledger clock (it may go backwards)."""
        if not self.config.test_mode:
            raise RequestRejected("not_test_mode", "the ledger clock can be set only in test mode")
        self.clock.set(now, frozen=frozen)
        with self._transaction() as db:
            self._persist_clock(db, now)

