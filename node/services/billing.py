"""Real-time billing: the provider's claimer and the renter's escrow watcher.

Theory of operation. Money moves only through the escrow ledger (:class:`EscrowLedger`); this
service decides *when*. Time is the ledger's (``EscrowView.now``), because that is the clock
the escrow accrues by — a development ledger may run it faster than the wall clock; polling
happens every ``poll_interval_s`` wall seconds.

Provider, per rental (:func:`provider_billing`):
  start the escrow when the job starts → every ``claim_interval_s`` of ledger time claim the
  accrued minutes (one transaction whatever the number of minutes) → when the escrow is
  exhausted (every deposited minute accrued) wait ``grace_s`` of ledger time for a top-up, then
  stop the job → when the job ends, settle: ``close`` (pays what accrued, refunds the rest to
  the renter) or ``settle_expired`` once expired, recorded and retried until it lands
  (``services.settlement``).

Renter, per rental (:func:`renter_billing`):
  watch the remaining minutes and warn once at ``warn_remaining_minutes`` (optionally top up
  automatically); if the provider never starts, take everything back at the start deadline;
  stop when the escrow is closed. :func:`close_early` returns every unaccrued minute.

Every receipt is passed to ``record`` (earnings and spending per rental). A ledger failure is
logged and retried at the next poll; it never kills the job on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import trio

from dgpu.node.ports.settlement import PendingSettlement
from dgpu.node.services.settlement import Settled, Settlements, attempt_settlement
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.ledger import (
    ContractsError,
    EscrowHandle,
    EscrowLedger,
    EscrowNotFound,
    EscrowReceipt,
    EscrowView,
)
from dgpu.protocol.messages import AgreementTerms, EscrowRef, UsageReceipt
from dgpu.protocol.reconcile import reconcile

__all__ = [
    "STOPPED_EXHAUSTED",
    "STOPPED_RENTER_CLOSED",
    "BillingPolicy",
    "LedgerEscrowGate",
    "LedgerEscrowVerifier",
    "LedgerTime",
    "ProviderBillingResult",
    "RenterBillingResult",
    "close_early",
    "handle_of",
    "provider_billing",
    "renter_billing",
    "synced_time",
]

log = logging.getLogger(__name__)

Record = Callable[[EscrowReceipt], Awaitable[None]]

#: why provider billing stopped a job (``ProviderBillingResult.stopped_for``)
STOPPED_RENTER_CLOSED = "the renter closed the escrow"
STOPPED_EXHAUSTED = "escrow exhausted (no top-up within the grace period)"


async def _no_record(receipt: EscrowReceipt) -> None:
    del receipt


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    #: ledger seconds between claims (ARCHITECTURE.md: claim rarely, a claim costs a transaction)
    claim_interval_s: int = 600
    #: ledger seconds the provider keeps an exhausted job alive, waiting for a top-up
    grace_s: int = 60
    #: the renter is warned when this many paid minutes or fewer remain
    warn_remaining_minutes: int = 2
    #: the renter tops up by this many minutes when warned (0 = never automatically)
    auto_top_up_minutes: int = 0
    #: wall seconds between looks at the ledger
    poll_interval_s: float = 5.0


@dataclass
class ProviderBillingResult:
    receipts: list[EscrowReceipt] = field(default_factory=list)
    #: why the job was stopped by billing, if it was
    stopped_for: str | None = None
    #: the escrow was closed when billing returned (else its settlement is pending, retried)
    settled: bool = True

    @property
    def earned(self) -> int:
        return sum(r.paid for r in self.receipts)

    @property
    def claims(self) -> int:
        return sum(1 for r in self.receipts if r.action == "claim")


@dataclass
class RenterBillingResult:
    receipts: list[EscrowReceipt] = field(default_factory=list)
    warnings: list[int] = field(default_factory=list)
    final: EscrowView | None = None


async def _fetch(ledger: EscrowLedger, handle: EscrowHandle) -> EscrowView | Literal["gone"] | None:
    """The escrow now; ``"gone"`` when its account no longer exists (Solana closes a settled
    escrow's account, rent back to the renter: an escrow we saw open and now cannot find is
    closed); ``None`` on a transient failure."""
    try:
        return await ledger.fetch(handle.address)
    except EscrowNotFound:
        return "gone"
    except ContractsError as exc:
        log.warning("escrow %s: fetch failed (%s); retrying at the next poll", handle.address, exc)
        return None


async def _metered_enough(view: EscrowView, receipts: Callable[[], Awaitable[Sequence[UsageReceipt]]] | None
                          ) -> bool:
    if receipts is None:
        return True
    check = reconcile(await receipts(), accrued=view.accrued_minutes, claimed=view.claimed_minutes)
    if not check.may_claim:
        log.debug("escrow %s: %d accrued minute(s) not metered yet; the claim waits", view.address[:8],
                 check.unmetered)
    return check.may_claim


async def provider_billing(
    ledger: EscrowLedger,
    handle: EscrowHandle,
    *,
    job_done: trio.Event,
    stop_job: Callable[[str], Awaitable[None]],
    policy: BillingPolicy = BillingPolicy(),
    record: Record = _no_record,
    already_started: bool = False,
    receipts: Callable[[], Awaitable[Sequence[UsageReceipt]]] | None = None,
    settlements: Settlements | None = None,
) -> ProviderBillingResult:
    """Bill one rental from the provider's side until the job is done and the escrow settled.

    Call when the job starts. ``stop_job(reason)`` is awaited once if the escrow runs out and
    no top-up comes within the grace period. ``already_started`` skips ``start`` (a daemon that
    restarted mid-rental must not start twice; the ledger would refuse it anyway). With
    ``receipts`` (the rental's usage receipts so far) a claim waits until every accrued minute is
    metered (``dgpu.protocol.reconcile``): the provider never claims a minute it did not meter.
    With ``settlements`` the final close is durable and retried until it lands (``result.settled``
    says whether it did before this returned)."""
    result = ProviderBillingResult()

    async def apply(action: Callable[[EscrowHandle], Awaitable[EscrowReceipt]]) -> EscrowReceipt:
        receipt = await action(handle)
        result.receipts.append(receipt)
        await record(receipt)
        return receipt

    if not already_started:
        await apply(ledger.start)
    last_claim_at: int | None = None
    exhausted_since: int | None = None
    while not job_done.is_set():
        with trio.move_on_after(policy.poll_interval_s):
            await job_done.wait()
        if job_done.is_set():
            break
        view = await _fetch(ledger, handle)
        if view is None or view == "gone" or view.status is EscrowStatus.CLOSED:
            if view is not None:  # the renter closed it: nothing more will be paid
                result.stopped_for = STOPPED_RENTER_CLOSED
                await stop_job(result.stopped_for)
                return result
            continue
        if last_claim_at is None:
            last_claim_at = view.started_at or view.now
        if (view.claimable_minutes and view.now - last_claim_at >= policy.claim_interval_s
                and await _metered_enough(view, receipts)):
            try:
                await apply(ledger.claim)
                last_claim_at = view.now
            except ContractsError as exc:
                log.warning("escrow %s: claim failed (%s)", handle.address, exc)
        exhausted = view.expires_at is not None and view.now >= view.expires_at
        if not exhausted:
            exhausted_since = None
        elif exhausted_since is None:
            exhausted_since = view.now
            log.info("escrow %s exhausted; stopping the job in %d s unless topped up", handle.address,
                     policy.grace_s)
        elif view.now - exhausted_since >= policy.grace_s:
            result.stopped_for = STOPPED_EXHAUSTED
            await stop_job(result.stopped_for)
            break
    settled = await _settle(ledger, handle, record, settlements)
    result.settled = settled.done
    if settled.receipt is not None:
        result.receipts.append(settled.receipt)
    return result


async def _settle(ledger: EscrowLedger, handle: EscrowHandle, record: Record,
                  settlements: Settlements | None) -> Settled:
    """Close the escrow after the job: ``close`` pays what accrued and refunds the rest. Through
    ``settlements`` the close is recorded first and retried until it lands; without, tried once."""
    if settlements is not None:
        return await settlements.settle(handle)
    settled = await attempt_settlement(ledger, PendingSettlement(handle, "close", 0))
    if settled.receipt is not None:
        await record(settled.receipt)
    elif not settled.done:
        log.error("escrow %s left open (%s): it is settled after expiry", handle.address, settled.error)
    return settled


async def renter_billing(
    ledger: EscrowLedger,
    handle: EscrowHandle,
    *,
    policy: BillingPolicy = BillingPolicy(),
    on_warning: Callable[[int], None] = lambda remaining: None,
    record: Record = _no_record,
    done: trio.Event | None = None,
) -> RenterBillingResult:
    """Watch one rental from the renter's side until its escrow is closed (or ``done`` is set).

    Warns once when ``warn_remaining_minutes`` or fewer remain (and tops up if the policy says
    so); reclaims everything at the start deadline if the provider never started."""
    result = RenterBillingResult()
    warned_at_max: int | None = None
    while done is None or not done.is_set():
        view = await _fetch(ledger, handle)
        if view == "gone":  # closed and its account reclaimed (Solana)
            return result
        if view is not None:
            result.final = view
            if view.status is EscrowStatus.CLOSED:
                return result
            if view.started_at is None and view.now >= view.start_deadline:
                log.warning("provider never started rental %s: reclaiming the deposit", handle.rental_id)
                try:
                    receipt = await ledger.refund_unstarted(handle)
                    result.receipts.append(receipt)
                    await record(receipt)
                except ContractsError as exc:
                    log.warning("refund of %s failed (%s); retrying", handle.address, exc)
            remaining = view.max_minutes - view.accrued_minutes
            if (view.started_at is not None and remaining <= policy.warn_remaining_minutes
                    and warned_at_max != view.max_minutes):
                warned_at_max = view.max_minutes
                result.warnings.append(remaining)
                on_warning(remaining)
                if policy.auto_top_up_minutes and view.expires_at is not None and view.now < view.expires_at:
                    try:
                        receipt = await ledger.top_up(handle, policy.auto_top_up_minutes)
                        result.receipts.append(receipt)
                        await record(receipt)
                    except ContractsError as exc:
                        log.warning("top-up of %s failed (%s)", handle.address, exc)
        if done is None:
            await trio.sleep(policy.poll_interval_s)
        else:
            with trio.move_on_after(policy.poll_interval_s):
                await done.wait()
    return result


async def close_early(ledger: EscrowLedger, handle: EscrowHandle, record: Record = _no_record) -> EscrowReceipt:
    """Renter: stop paying now; every unaccrued minute comes back."""
    receipt = await ledger.close(handle)
    await record(receipt)
    return receipt


class LedgerTime:
    """An estimate of the ledger's clock, for deadlines put into quotes.

    Escrow deadlines are compared with the *ledger's* clock, which a development ledger may run
    faster than the wall clock; Solana's runs at wall speed. ``sync`` reads the ledger once;
    ``now()`` extrapolates with the ledger's speed (1 unless the ledger reports another)."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._anchor_wall = wall()
        self._anchor_ledger = int(self._anchor_wall)
        self.speed = 1

    async def sync(self, ledger: EscrowLedger) -> None:
        self.speed = await ledger.clock_speed()
        self._anchor_ledger = await ledger.now()
        self._anchor_wall = self._wall()

    def now(self) -> int:
        return self._anchor_ledger + int((self._wall() - self._anchor_wall) * self.speed)


async def synced_time(ledger: EscrowLedger) -> LedgerTime:
    """A :class:`LedgerTime` synced once with ``ledger``; the wall clock's estimate if the ledger
    cannot be reached now (a node must start while its ledger is down)."""
    estimate = LedgerTime()
    try:
        await estimate.sync(ledger)
    except ContractsError as exc:
        log.warning("cannot read the ledger's clock (%s); estimating it from the wall clock", exc)
    return estimate


class LedgerEscrowVerifier:
    """Provider side: the escrow an Accept names must be funded exactly for the terms.

    Checked on the ledger, never taken from the renter's word: right ledger, renter, provider
    (us), rental id, rate, minutes, deposit, fee, mint and start deadline; open, not started,
    and the vault really holds the deposit."""

    def __init__(self, ledger: EscrowLedger, mint: str) -> None:
        self.ledger = ledger
        self.mint = mint

    async def verify(self, escrow: EscrowRef, terms: AgreementTerms) -> bool:
        problem = await self.problem(escrow, terms)
        if problem:
            log.warning("escrow %s refused: %s", escrow.address, problem)
        return problem is None

    async def problem(self, escrow: EscrowRef, terms: AgreementTerms) -> str | None:
        """Why the escrow does not fund the terms, or ``None`` when it does."""
        if escrow.ledger != self.ledger.ledger:
            return f"escrow on ledger {escrow.ledger!r}, we accept {self.ledger.ledger!r}"
        try:
            view = await self.ledger.fetch(escrow.address)
        except ContractsError as exc:
            return f"cannot read the escrow: {exc}"
        expected = {
            "renter": (view.handle.renter, terms.renter),
            "provider": (view.handle.provider, self.ledger.wallet),
            "terms provider": (terms.provider, self.ledger.wallet),
            "rental id": (view.handle.rental_id, escrow.rental_id),
            "rate": (view.rate_per_minute, terms.rate_per_minute),
            "minutes": (view.max_minutes, terms.max_minutes),
            "deposit": (view.deposited, terms.deposit),
            "fee": (view.fee_bps, terms.fee_bps),
            "mint": (view.mint, self.mint),
            "terms mint": (terms.mint, self.mint),
            "start deadline": (view.start_deadline, terms.start_deadline),
        }
        for name, (actual, wanted) in expected.items():
            if actual != wanted:
                return f"{name} is {actual!r}, expected {wanted!r}"
        if view.status is not EscrowStatus.OPEN or view.started_at is not None:
            return "the escrow is not open and unstarted"
        if view.vault_balance < view.deposited:
            return f"the vault holds {view.vault_balance}, less than the deposit {view.deposited}"
        return None


def handle_of(terms: AgreementTerms) -> EscrowHandle:
    """The ledger handle of an agreement's escrow."""
    return EscrowHandle(ledger=terms.escrow.ledger, address=terms.escrow.address, renter=terms.renter,
                        provider=terms.provider, rental_id=terms.escrow.rental_id)


class LedgerEscrowGate:
    """Provider side, money before work (``job_stream.EscrowGate``): the escrow is re-read when
    the job is submitted, started on the ledger and read back started before the job starts (then
    a guard is armed in ``settlements``: settled at expiry whatever happens to this process), and
    settled if it was started for a job that then did not run."""

    def __init__(self, ledger: EscrowLedger, mint: str, record: Record = _no_record,
                 settlements: Settlements | None = None) -> None:
        self.ledger = ledger
        self._verifier = LedgerEscrowVerifier(ledger, mint)
        self._record = record
        self._settlements = settlements

    async def problem(self, terms: AgreementTerms) -> str | None:
        return await self._verifier.problem(terms.escrow, terms)

    async def start(self, terms: AgreementTerms) -> str | None:
        handle = handle_of(terms)
        try:
            await self._record(await self.ledger.start(handle))
            view = await self.ledger.fetch(handle.address)
        except ContractsError as exc:
            return str(exc)
        if view.status is not EscrowStatus.OPEN or view.started_at is None:
            return f"the ledger shows it {view.status}, started at {view.started_at}"
        if self._settlements is not None and view.expires_at is not None:
            await self._settlements.arm(handle, view.expires_at)
        return None

    async def settle(self, terms: AgreementTerms) -> None:
        await _settle(self.ledger, handle_of(terms), self._record, self._settlements)
