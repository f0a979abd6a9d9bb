"""The escrow accrual math: the reference the Anchor program and both ledgers implement.

Theory of operation (the full rules are in ``docs/escrow-rules.md``): a renter deposits
``rate_per_minute x max_minutes`` into a vault owned by the rental's escrow. The provider
starts the rental before ``start_deadline``; from then on whole minutes accrue, up to
``max_minutes``. A *started but unfinished minute costs nothing*: minutes are
``(now - started_at) // 60``. The provider claims accrued minutes at any time (one transfer
pair whatever the duration); the renter may top up before expiry or close early and get every
unaccrued minute back; after expiry anyone settles; if the provider never starts, the renter
takes everything back after the deadline.

The fee on minutes ``a -> b`` is ``fee_for(b) - fee_for(a)`` where
``fee_for(m) = floor(m x rate x fee_bps / 10000)``: computed on the cumulative total, so however
claims are split the treasury gets exactly ``floor(total x bps / 10000)`` and the provider the
rest. Invariant after every step: ``vault == deposited - paid - fee_paid - refunded``; once
closed, ``paid + fee_paid + refunded == deposited``.

Tokens sent to a vault outside the instructions ("dust": anyone can transfer to an address that
can be derived) are not part of the accounting: the vault may hold more than it, never less, and
an exit hands whatever is left to the renter (:func:`sweep_dust`) without counting it in
``refunded``.

Every instruction is a pure function ``(state, actor, now, ...) -> Outcome`` that raises
:class:`~dgpu.protocol.errors.EscrowError` and changes nothing when refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from .errors import EscrowError
from .errors import EscrowErrorCode as Code

__all__ = [
    "MAX_FEE_BPS",
    "SECONDS_PER_MINUTE",
    "Escrow",
    "EscrowStatus",
    "Outcome",
    "Party",
    "RentalIds",
    "Transfer",
    "accrued_minutes",
    "claim",
    "close",
    "expired",
    "expires_at",
    "open_escrow",
    "payout",
    "refund_unstarted",
    "settle_expired",
    "start",
    "sweep_dust",
    "top_up",
]

SECONDS_PER_MINUTE = 60
#: hard cap on the platform fee (20 %), also enforced by the program's Config
MAX_FEE_BPS = 2000
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1


class EscrowStatus(StrEnum):
    OPEN = "open"
    """Funds in the vault; instructions accepted."""
    CLOSED = "closed"
    """Terminal: the vault is empty and nothing is accepted any more."""


class Party(StrEnum):
    RENTER = "renter"
    PROVIDER = "provider"
    TREASURY = "treasury"
    VAULT = "vault"


@dataclass(frozen=True, slots=True)
class Transfer:
    """``amount`` base units move from ``source`` to ``destination``."""

    source: Party
    destination: Party
    amount: int


@dataclass(frozen=True, slots=True)
class Escrow:
    """One rental's escrow. Invariants in the field comments hold after every instruction."""

    renter: str
    provider: str
    mint: str
    rental_id: int
    rate_per_minute: int
    #: grows only by top_up
    max_minutes: int
    #: == rate_per_minute * max_minutes, always
    deposited: int
    #: fixed at open, <= MAX_FEE_BPS
    fee_bps: int
    start_deadline: int
    started_at: int | None
    #: minutes already paid out, <= max_minutes
    claimed_minutes: int
    paid: int
    fee_paid: int
    refunded: int
    status: EscrowStatus

    @property
    def vault(self) -> int:
        """Base units still in the vault."""
        return self.deposited - self.paid - self.fee_paid - self.refunded


@dataclass(frozen=True, slots=True)
class Outcome:
    """The escrow after an instruction and the token movements it caused, in order."""

    escrow: Escrow
    transfers: tuple[Transfer, ...]


def accrued_minutes(escrow: Escrow, now: int) -> int:
    """Whole minutes accrued at ``now``, clamped to [0, max_minutes]; 0 before the start."""
    if escrow.started_at is None:
        return 0
    elapsed = max(now - escrow.started_at, 0)
    return min(elapsed // SECONDS_PER_MINUTE, escrow.max_minutes)


def expires_at(escrow: Escrow) -> int | None:
    """When the last minute accrues; ``None`` before the start."""
    if escrow.started_at is None:
        return None
    return escrow.started_at + SECONDS_PER_MINUTE * escrow.max_minutes


def expired(escrow: Escrow, now: int) -> bool:
    end = expires_at(escrow)
    return end is not None and now >= end


def _fee_for(escrow: Escrow, minutes: int) -> int:
    return minutes * escrow.rate_per_minute * escrow.fee_bps // 10_000


def payout(escrow: Escrow, to_minutes: int) -> tuple[int, int]:
    """(provider amount, fee) for paying minutes ``claimed_minutes -> to_minutes``."""
    minutes = to_minutes - escrow.claimed_minutes
    if minutes < 0:
        raise ValueError("cannot pay out fewer minutes than already claimed")
    fee = _fee_for(escrow, to_minutes) - _fee_for(escrow, escrow.claimed_minutes)
    return minutes * escrow.rate_per_minute - fee, fee


def _require(condition: bool, code: Code, detail: str = "") -> None:
    if not condition:
        raise EscrowError(code, detail)


def _open_only(escrow: Escrow) -> None:
    _require(escrow.status is EscrowStatus.OPEN, Code.ESCROW_CLOSED)


def _pay_accrued(escrow: Escrow, to_minutes: int) -> tuple[Escrow, list[Transfer]]:
    to_provider, fee = payout(escrow, to_minutes)
    transfers = []
    if to_provider:
        transfers.append(Transfer(Party.VAULT, Party.PROVIDER, to_provider))
    if fee:
        transfers.append(Transfer(Party.VAULT, Party.TREASURY, fee))
    return replace(escrow, claimed_minutes=to_minutes, paid=escrow.paid + to_provider,
                   fee_paid=escrow.fee_paid + fee), transfers


def _close_with_refund(escrow: Escrow, transfers: list[Transfer]) -> Outcome:
    refund = escrow.vault
    if refund:
        transfers.append(Transfer(Party.VAULT, Party.RENTER, refund))
    closed = replace(escrow, refunded=escrow.refunded + refund, status=EscrowStatus.CLOSED)
    return Outcome(closed, tuple(transfers))


def open_escrow(
    *,
    renter: str,
    provider: str,
    mint: str,
    rental_id: int,
    rate_per_minute: int,
    max_minutes: int,
    start_deadline: int,
    fee_bps: int,
    now: int,
    paused: bool = False,
    last_rental_id: int = 0,
) -> Outcome:
    """The renter deposits ``rate x max_minutes``; refused when paused, on impossible terms, or when
    ``rental_id`` is not above ``last_rental_id``, the highest id this renter opened before (so no
    rental is ever opened twice, even after its closed escrow is gone)."""
    _require(0 <= fee_bps <= MAX_FEE_BPS, Code.FEE_TOO_HIGH)
    _require(0 < rate_per_minute <= U64_MAX and 0 < max_minutes <= U32_MAX, Code.INVALID_AMOUNT)
    _require(0 <= rental_id <= U64_MAX, Code.INVALID_AMOUNT, "rental id is a u64")
    deposited = rate_per_minute * max_minutes
    _require(deposited <= U64_MAX, Code.OVERFLOW)
    _require(start_deadline > now, Code.INVALID_DEADLINE)
    _require(not paused, Code.PAUSED)
    _require(rental_id > last_rental_id, Code.RENTAL_ID_USED)  # checked last, as the program does
    escrow = Escrow(
        renter=renter, provider=provider, mint=mint, rental_id=rental_id,
        rate_per_minute=rate_per_minute, max_minutes=max_minutes, deposited=deposited,
        fee_bps=fee_bps, start_deadline=start_deadline, started_at=None, claimed_minutes=0,
        paid=0, fee_paid=0, refunded=0, status=EscrowStatus.OPEN,
    )
    return Outcome(escrow, (Transfer(Party.RENTER, Party.VAULT, deposited),))


def start(escrow: Escrow, actor: str, now: int) -> Outcome:
    """The provider marks the rental started; accrual counts from ``now``."""
    _require(actor == escrow.provider, Code.UNAUTHORIZED, "only the provider starts")
    _open_only(escrow)
    _require(escrow.started_at is None, Code.ALREADY_STARTED)
    _require(now < escrow.start_deadline, Code.START_DEADLINE_PASSED)
    return Outcome(replace(escrow, started_at=now), ())


def claim(escrow: Escrow, actor: str, now: int) -> Outcome:
    """The provider takes every accrued, unclaimed minute (fee to the treasury)."""
    _require(actor == escrow.provider, Code.UNAUTHORIZED, "only the provider claims")
    _open_only(escrow)
    _require(escrow.started_at is not None, Code.NOT_STARTED)
    accrued = accrued_minutes(escrow, now)
    _require(accrued > escrow.claimed_minutes, Code.NOTHING_TO_CLAIM)
    paid, transfers = _pay_accrued(escrow, accrued)
    return Outcome(paid, tuple(transfers))


def top_up(escrow: Escrow, actor: str, now: int, extra_minutes: int) -> Outcome:
    """The renter buys ``extra_minutes`` more at the same rate; only before expiry."""
    _require(actor == escrow.renter, Code.UNAUTHORIZED, "only the renter tops up")
    _open_only(escrow)
    _require(0 < extra_minutes <= U32_MAX, Code.INVALID_AMOUNT)
    _require(not expired(escrow, now), Code.EXPIRED)
    amount = escrow.rate_per_minute * extra_minutes
    _require(escrow.max_minutes + extra_minutes <= U32_MAX and escrow.deposited + amount <= U64_MAX,
             Code.OVERFLOW)
    grown = replace(escrow, max_minutes=escrow.max_minutes + extra_minutes,
                    deposited=escrow.deposited + amount)
    return Outcome(grown, (Transfer(Party.RENTER, Party.VAULT, amount),))


def close(escrow: Escrow, actor: str, now: int) -> Outcome:
    """Renter or provider: pay what accrued, refund the rest, close."""
    _require(actor in (escrow.renter, escrow.provider), Code.UNAUTHORIZED,
             "only the renter or the provider closes")
    _open_only(escrow)
    paid, transfers = _pay_accrued(escrow, max(accrued_minutes(escrow, now), escrow.claimed_minutes))
    return _close_with_refund(paid, transfers)


def settle_expired(escrow: Escrow, actor: str, now: int) -> Outcome:
    """Anyone, after expiry: pay every minute, refund any remainder, close."""
    del actor  # anyone may settle
    _open_only(escrow)
    _require(expired(escrow, now), Code.NOT_EXPIRED)
    paid, transfers = _pay_accrued(escrow, escrow.max_minutes)
    return _close_with_refund(paid, transfers)


def refund_unstarted(escrow: Escrow, actor: str, now: int) -> Outcome:
    """The renter, after the start deadline of a rental never started: everything back."""
    _require(actor == escrow.renter, Code.UNAUTHORIZED, "only the renter is refunded")
    _open_only(escrow)
    _require(escrow.started_at is None, Code.ALREADY_STARTED)
    _require(now >= escrow.start_deadline, Code.START_DEADLINE_NOT_REACHED)
    return _close_with_refund(escrow, [])


def sweep_dust(escrow: Escrow, vault_balance: int) -> tuple[Transfer, ...]:
    """After an exit: what the closed escrow's vault still holds beyond its accounting (dust) goes to
    the renter, so the vault ends empty; nothing for an open escrow or an empty vault."""
    if escrow.status is EscrowStatus.CLOSED and vault_balance > 0:
        return (Transfer(Party.VAULT, Party.RENTER, vault_balance),)
    return ()


class RentalIds:
    """A renter's rental ids: strictly increasing, as ``open`` requires (``RentalIdUsed`` otherwise).

    ``clock_us`` is the wall clock in microseconds (passed in: this module reads no clock); each id
    is that time, lifted above the last id given, so ids keep increasing within a process and across
    restarts unless the wall clock steps back (then the ledger refuses and the caller asks again).
    """

    def __init__(self, clock_us: Callable[[], int]) -> None:
        self._clock_us = clock_us
        self._last = 0

    def __call__(self) -> int:
        self._last = max(self._last + 1, self._clock_us())
        return self._last
