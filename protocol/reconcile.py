"""Usage receipts against the escrow: the rule both sides apply to billing.

Rules: a provider is paid for whole minutes the escrow accrued on the ledger's clock, but it
may only *claim* minutes it has metered and sent signed ``UsageReceipt`` s for. The ledger's
claim takes every accrued minute at once, so the provider claims only while the accrued
minutes are all metered (:attr:`Reconciliation.may_claim`); otherwise it waits for the meter.
The renter compares the same two numbers from its side: an escrow that accrued more minutes
than it received receipts for, beyond a slack (a receipt arrives after its minute ends), is
flagged (:attr:`Reconciliation.over_accrued`). Pure: the caller passes the receipts it holds
and the ledger's view.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .messages import UsageReceipt

__all__ = ["Reconciliation", "metered_minutes", "reconcile"]


def metered_minutes(receipts: Iterable[UsageReceipt]) -> int:
    """Distinct minutes covered by ``receipts`` (a receipt sent twice counts once)."""
    return len({r.minute_index for r in receipts})


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Metered vs accrued vs claimed minutes of one rental."""

    metered: int
    accrued: int
    claimed: int
    #: minutes of accrual a receipt may lag behind (its minute must end before it is sent)
    slack: int = 1

    @property
    def may_claim(self) -> bool:
        """The provider may claim now: something is unclaimed and every accrued minute is metered."""
        return self.claimed < self.accrued <= self.metered

    @property
    def unmetered(self) -> int:
        """Accrued minutes with no receipt yet."""
        return max(0, self.accrued - self.metered)

    @property
    def over_accrued(self) -> bool:
        """The renter's flag: the escrow accrued more minutes than receipts arrived for (beyond
        the slack), or the provider claimed minutes it never metered."""
        return self.unmetered > self.slack or self.claimed > self.metered + self.slack


def reconcile(receipts: Iterable[UsageReceipt], *, accrued: int, claimed: int, slack: int = 1) -> Reconciliation:
    """Compare a rental's receipts with the escrow's accrued and claimed minutes."""
    if accrued < 0 or claimed < 0 or slack < 0:
        raise ValueError("minute counts are >= 0")
    return Reconciliation(metered=metered_minutes(receipts), accrued=accrued, claimed=claimed, slack=slack)
