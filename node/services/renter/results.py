"""What a renter sees of an offer (:class:`OfferInfo`) and of a rental's end (:class:`RentalResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dgpu.protocol.ledger import EscrowView
from dgpu.protocol.messages import JobState, Offer, ResultRef, UsageReceipt
from dgpu.protocol.reconcile import Reconciliation, reconcile

__all__ = ["OfferInfo", "RentalResult"]


@dataclass(frozen=True, slots=True)
class OfferInfo:
    """One offer as a renter sees it (prices per GPU-minute, in base units)."""

    offer: Offer
    peer_id: str

    @property
    def provider(self) -> str:
        return self.offer.provider

    @property
    def gpu_model(self) -> str:
        return self.offer.gpus[0].model

    @property
    def vram_mib(self) -> int:
        return self.offer.gpus[0].vram_mib

    @property
    def price_per_minute(self) -> int:
        return self.offer.price_per_minute

    @property
    def simulated(self) -> bool:
        return self.offer.simulated


@dataclass
class RentalResult:
    """How a rental ended: the job's outcome and the escrow's final accounting (base units)."""

    state: JobState
    exit_code: int | None
    reason: str
    log_chunks: int
    escrow: EscrowView | None
    warnings: list[int] = field(default_factory=list)
    #: the job's packed output folder on the provider (FINISHED jobs); see Rental.download_result
    result: ResultRef | None = None
    #: the provider's signed usage receipts: one per metered minute, with the leased GPUs' samples
    receipts: tuple[UsageReceipt, ...] = ()

    @property
    def reconciliation(self) -> Reconciliation | None:
        """The receipts against the settled escrow (``over_accrued``: paid for unmetered minutes)."""
        if self.escrow is None:
            return None
        return reconcile(self.receipts, accrued=self.escrow.claimed_minutes, claimed=self.escrow.claimed_minutes)

    @property
    def minutes(self) -> int:
        return self.escrow.claimed_minutes if self.escrow else 0

    @property
    def paid(self) -> int:
        return self.escrow.paid if self.escrow else 0

    @property
    def fee(self) -> int:
        return self.escrow.fee_paid if self.escrow else 0

    @property
    def refunded(self) -> int:
        return self.escrow.refunded if self.escrow else 0
