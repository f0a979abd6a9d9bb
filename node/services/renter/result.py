"""How a rental ended (:class:`RentalResult`) and where its final accounting comes from.

The amounts a renter is told (paid, fee, refunded, minutes) are the ledger's settlement
(:meth:`EscrowLedger.settlement`): on Solana a settled escrow's account is reclaimed, so they
are summed from the transactions that moved the escrow's money, never re-read from an account
that no longer exists; the development ledger keeps the closed escrow and reports its totals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dgpu.protocol.ledger import ContractsError, EscrowHandle, EscrowLedger, EscrowView, Settlement
from dgpu.protocol.messages import JobState, ResultRef, UsageReceipt
from dgpu.protocol.reconcile import Reconciliation, reconcile

__all__ = ["RentalResult", "final_settlement"]

log = logging.getLogger(__name__)


@dataclass
class RentalResult:
    """How a rental ended: the job's outcome and the escrow's final accounting (base units)."""

    state: JobState
    exit_code: int | None
    reason: str
    log_chunks: int
    #: the escrow as last read, closed; None where the ledger reclaimed its account (Solana)
    escrow: EscrowView | None
    warnings: list[int] = field(default_factory=list)
    #: the job's packed output folder on the provider (FINISHED jobs); see Rental.download_result
    result: ResultRef | None = None
    #: the provider's signed usage receipts: one per metered minute, with the leased GPUs' samples
    receipts: tuple[UsageReceipt, ...] = ()
    #: the settled escrow's accounting from the ledger's transactions (None: not settled, or unread)
    settlement: Settlement | None = None
    #: the agreed rate, base units per minute (the minutes billed are settlement.charged / rate)
    rate_per_minute: int = 0

    @property
    def reconciliation(self) -> Reconciliation | None:
        """The receipts against the settled escrow (``over_accrued``: paid for unmetered minutes)."""
        if self.escrow is None and self.settlement is None:
            return None
        return reconcile(self.receipts, accrued=self.minutes, claimed=self.minutes)

    @property
    def minutes(self) -> int:
        if self.escrow is not None:
            return self.escrow.claimed_minutes
        if self.settlement is not None and self.rate_per_minute:
            return self.settlement.charged // self.rate_per_minute
        return 0

    @property
    def paid(self) -> int:
        return self.settlement.paid if self.settlement else (self.escrow.paid if self.escrow else 0)

    @property
    def fee(self) -> int:
        return self.settlement.fee if self.settlement else (self.escrow.fee_paid if self.escrow else 0)

    @property
    def refunded(self) -> int:
        return self.settlement.refunded if self.settlement else (self.escrow.refunded if self.escrow else 0)


async def final_settlement(ledger: EscrowLedger, handle: EscrowHandle) -> Settlement | None:
    """The settled escrow's accounting; None (logged) when the ledger cannot tell it now."""
    try:
        return await ledger.settlement(handle)
    except ContractsError as exc:
        log.warning("escrow %s: settlement not read (%s); the chain still holds it", handle.address, exc)
        return None
