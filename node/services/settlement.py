"""Settlement that always lands: every ledger action that ends a rental, kept until it does.

Theory of operation. :class:`Settlements` (one per node, renter or provider) owns the node's
pending settlements: a durable copy in its store (``ports.settlement``) and, in memory, when to
try each next. An action is recorded *before* it is attempted (:meth:`Settlements.settle`), so a
crash, a restart or a ledger outage between the two loses nothing; :meth:`Settlements.run`
retries what failed with exponential backoff (``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``, wall
seconds) until the action lands or the escrow is found closed, and on start takes up whatever the
store still holds (a restarted node settles what its last run left). :meth:`Settlements.arm`
records a guard when a rental starts: ``settle_expired`` once it expires, so no escrow stays open
past expiry (plus ``RETRY_MAX_S``, the look-again bound) while either side's node runs, even when
the other side is gone for good.

One attempt (:func:`attempt_settlement`) reads the escrow first: gone or closed → done (the
other side, or anyone, got there first); not due → look again at its due time; expired →
``settle_expired`` (what ``close`` would do then, and anyone may send it); otherwise the recorded
action (``close``: accrued minutes paid, the rest refunded; ``refund_unstarted`` once the start
deadline passed, ``close`` before). An outage (``TransportError``, an unconfirmed transaction)
leaves the entry pending; so does a refusal, logged, except that an escrow found closed is done.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

import trio

from dgpu.node.errors import StoreError
from dgpu.node.ports.settlement import PendingSettlement, SettlementAction, SettlementStore
from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.ledger import (
    ContractsError,
    EscrowHandle,
    EscrowLedger,
    EscrowNotFound,
    EscrowReceipt,
    EscrowRefused,
    EscrowView,
    LedgerUnavailable,
)

__all__ = [
    "RETRY_MAX_S", "RETRY_MIN_S", "Settled", "Settlements", "attempt_settlement", "ledger_unavailable",
    "settle_rental",
]

log = logging.getLogger(__name__)

#: first retry after a failed attempt, in wall seconds; doubles per failure up to RETRY_MAX_S
RETRY_MIN_S = 1.0
#: the longest wait between two attempts, and between two looks at an armed guard past its due
#: time: so an escrow is settled at most this long (wall) after the ledger is back or it expired
RETRY_MAX_S = 30.0

Record = Callable[[EscrowReceipt], Awaitable[None]]


async def _no_record(receipt: EscrowReceipt) -> None:
    del receipt


@dataclass(frozen=True, slots=True)
class Settled:
    """What one attempt found: ``done`` (landed, or closed by someone) with the receipt of our own
    action if it was ours; else ``due_at`` (ledger time) when not due yet, or ``error``."""

    done: bool
    receipt: EscrowReceipt | None = None
    due_at: int | None = None
    error: ContractsError | None = None
    outcome: str = ""


async def attempt_settlement(ledger: EscrowLedger, pending: PendingSettlement) -> Settled:
    """One try at ``pending`` (see the module docstring); never raises a ``ContractsError``."""
    handle = pending.handle
    try:
        view = await ledger.fetch(handle.address)
    except EscrowNotFound:  # Solana reclaims a settled escrow's account
        return Settled(True, outcome="escrow gone (settled)")
    except ContractsError as exc:
        return Settled(False, error=exc)
    if view.status is EscrowStatus.CLOSED:
        return Settled(True, outcome="found closed")
    expires = view.expires_at
    action: Literal["close", "settle_expired", "refund_unstarted"]
    if expires is not None and view.now >= expires:
        action = "settle_expired"
    elif view.now < pending.due_at:
        return Settled(False, due_at=pending.due_at)
    elif pending.action == "settle_expired":  # an armed guard: not expired yet
        if view.started_at is not None:
            return Settled(False, due_at=expires)
        if handle.renter != ledger.wallet or view.now < view.start_deadline:  # the provider may start it
            return Settled(False, due_at=max(view.start_deadline, view.now + 60))
        action = "refund_unstarted"
    elif pending.action == "refund_unstarted" and view.started_at is None and view.now >= view.start_deadline:
        action = "refund_unstarted"
    else:
        action = "close"
    try:
        receipt = await getattr(ledger, action)(handle)
    except EscrowNotFound:
        return Settled(True, outcome="escrow gone (settled)")
    except EscrowRefused as exc:
        if exc.code is EscrowErrorCode.ESCROW_CLOSED:
            return Settled(True, outcome="found closed")
        return Settled(False, error=exc)
    except ContractsError as exc:
        return Settled(False, error=exc)
    return Settled(True, receipt=receipt, outcome=action)


class Settlements:
    """The node's pending settlements (see the module docstring). ``ledger_now`` estimates the
    ledger's clock (``billing.LedgerTime.now``) so an armed guard is not read before it is due;
    ``record`` receives the receipt of every action that landed."""

    def __init__(self, ledger: EscrowLedger, store: SettlementStore, *, ledger_now: Callable[[], int],
                 record: Record = _no_record, retry_max_s: float = RETRY_MAX_S) -> None:
        self.ledger = ledger
        #: the longest wall wait between two looks at a pending entry (the settlement bound)
        self.retry_max_s = retry_max_s
        self._store = store
        self._ledger_now = ledger_now
        self._record = record
        #: address -> (entry, trio time of the next attempt); the store holds the durable copy
        self._due: dict[str, tuple[PendingSettlement, float]] = {}
        self._wake = trio.Event()
        self.landed = 0  #: actions of ours that landed (metrics, tests)

    def __len__(self) -> int:
        return len(self._due)

    def pending_for(self, address: str) -> PendingSettlement | None:
        entry = self._due.get(address)
        return entry[0] if entry is not None else None

    async def arm(self, handle: EscrowHandle, due_at: int) -> None:
        """A rental started (or was funded): settle it at ``due_at`` (its expiry, or the start
        deadline of one that never starts) unless it is closed before."""
        await self._schedule(await self._store.put(PendingSettlement(handle, "settle_expired", due_at)))

    async def settle(self, handle: EscrowHandle, action: SettlementAction = "close") -> Settled:
        """End a rental now: record the action durably, then try it once. When it did not land
        (``done`` False) the entry stays pending and :meth:`run` retries it."""
        pending = await self._store.put(PendingSettlement(handle, action, 0))
        result = await self._attempt(pending)
        if not result.done:
            self._schedule_retry(pending, result)
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take up what the store holds, then retry every pending settlement until it lands."""
        for pending in await self._store.pending():
            self._due[pending.handle.address] = (pending, trio.current_time())
        if self._due:
            log.info("%d settlement(s) pending from before: retrying", len(self._due))
        task_status.started()
        while True:
            now = trio.current_time()
            for address, (pending, at) in list(self._due.items()):
                if at <= now and self.pending_for(address) is pending:
                    result = await self._attempt(pending)
                    if not result.done and self.pending_for(address) is pending:  # not replaced meanwhile
                        self._schedule_retry(pending, result)
            self._wake = trio.Event()
            next_at = min((at for _, at in self._due.values()), default=math.inf)
            with trio.move_on_at(next_at):
                await self._wake.wait()

    async def _schedule(self, pending: PendingSettlement) -> None:
        self._due[pending.handle.address] = (pending, self._wall_until(pending.due_at))
        self._wake.set()

    def _wall_until(self, due_at: int) -> float:
        """The trio time to look at an entry due at ledger time ``due_at``: at most RETRY_MAX_S away,
        so a wrong estimate of the ledger's clock costs one fetch, never a late settlement."""
        ahead = max(0, due_at - self._ledger_now())
        return trio.current_time() + min(self.retry_max_s, float(ahead))

    async def _attempt(self, pending: PendingSettlement) -> Settled:
        address = pending.handle.address
        result = await attempt_settlement(self.ledger, pending)
        if result.done:
            with trio.CancelScope(shield=True):  # landed: the record must follow
                await self._store.done(address, result.outcome)
                if result.receipt is not None:
                    self.landed += 1
                    await self._record(result.receipt)
            self._due.pop(address, None)
            log.info("escrow %s settled (%s)", address[:8], result.outcome)
        elif result.error is not None:
            log.warning("escrow %s: %s failed (%s); retrying", address[:8], pending.action, result.error)
            await self._store.failed(address, str(result.error))
        elif result.due_at is not None and result.due_at != pending.due_at:
            await self._store.failed(address, "", due_at=result.due_at)
        return result

    def _schedule_retry(self, pending: PendingSettlement, result: Settled) -> None:
        address = pending.handle.address
        if result.error is not None:
            pending = replace(pending, attempts=pending.attempts + 1, last_error=str(result.error))
            delay = min(self.retry_max_s, RETRY_MIN_S * 2 ** min(pending.attempts - 1, 16))
            self._due[address] = (pending, trio.current_time() + delay)
        else:
            due = result.due_at if result.due_at is not None else pending.due_at
            pending = replace(pending, due_at=due)
            self._due[address] = (pending, self._wall_until(due))
        self._wake.set()


def ledger_unavailable(handle: EscrowHandle, error: ContractsError | None, *, expires_at: int | None,
                       retrying: bool) -> LedgerUnavailable:
    """The renter's error for a settlement that did not land, saying what happens next."""
    after = (f"; after it expires (ledger time {expires_at}) anyone may settle it" if expires_at is not None
             else "; if it never started, its deposit is refundable after the start deadline")
    then = (f"the settlement is recorded and this node retries it (every {RETRY_MIN_S:g} to {RETRY_MAX_S:g} s, "
            "also after a restart)" if retrying else "nothing on this node retries it")
    return LedgerUnavailable(f"the ledger could not settle escrow {handle.address} ({error}): {then}{after}",
                             escrow=handle.address, expires_at=expires_at)


async def settle_rental(ledger: EscrowLedger, handle: EscrowHandle, settlements: Settlements | None, *,
                        wait_s: float) -> EscrowView | None:
    """Renter, after its job: wait up to ``wait_s`` for the provider's close, then close it ourselves
    (through ``settlements``: recorded, retried until it lands). The escrow as closed, or None where
    the ledger reclaimed its account. Raises :class:`LedgerUnavailable` when it could not be closed."""
    seen: EscrowView | None = None
    with trio.move_on_after(wait_s):
        while True:
            try:
                seen = await ledger.fetch(handle.address)
            except EscrowNotFound:  # Solana closes a settled escrow's account (rent back to us)
                return None
            except ContractsError:
                break  # an outage: our own settlement takes over, and says so
            if seen.status is EscrowStatus.CLOSED:
                return seen
            await trio.sleep(0.2)
    settled: Settled | None = None
    if settlements is not None:
        try:
            settled = await settlements.settle(handle)
        except StoreError as exc:  # the node is stopping (its store closed): still try, once
            log.warning("escrow %s: the settlement cannot be recorded (%s); trying it once", handle.address[:8], exc)
            settlements = None
    if settled is None:
        settled = await attempt_settlement(ledger, PendingSettlement(handle, "close", 0))
    if not settled.done:
        raise ledger_unavailable(handle, settled.error, expires_at=seen.expires_at if seen is not None else None,
                                 retrying=settlements is not None)
    try:
        return await ledger.fetch(handle.address)
    except ContractsError:  # settled; reclaimed (Solana) or unreadable just now
        return None
