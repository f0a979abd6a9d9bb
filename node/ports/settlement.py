"""The settlement store port: ledger actions that end rentals, kept until they land.

``adapters.settlement_store.SettlementStore`` (SQLite) implements :class:`SettlementStore`; the
settlement service (``services.settlement.Settlements``) is its one writer. An entry is written
*before* its action is attempted, so a crash or an outage between the two loses nothing; it is
marked done when the action landed or the escrow was found closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from dgpu.protocol.ledger import EscrowHandle

__all__ = ["PendingSettlement", "SettlementAction", "SettlementStore"]

#: what the node wants done: close now (pays what accrued, refunds the rest), refund a rental never
#: started, or settle at expiry (a guard armed when a rental starts). After expiry every one of
#: them is done by ``settle_expired``, which anyone may send.
SettlementAction = Literal["close", "refund_unstarted", "settle_expired"]


@dataclass(frozen=True, slots=True)
class PendingSettlement:
    handle: EscrowHandle
    action: SettlementAction
    #: ledger time before which nothing is attempted (0: at once)
    due_at: int
    #: attempts that failed so far (outages and refusals)
    attempts: int = 0
    last_error: str = ""


class SettlementStore(Protocol):
    """Durable pending settlements, one per escrow address."""

    async def put(self, pending: PendingSettlement) -> PendingSettlement:
        """Record (or make more urgent) the settlement of an escrow; what is now stored. An entry
        already done stays done; an armed ``settle_expired`` is replaced by a ``close`` or
        ``refund_unstarted``, never the reverse; ``due_at`` only moves earlier."""
        ...

    async def pending(self) -> list[PendingSettlement]:
        """Every settlement not done yet."""
        ...

    async def failed(self, address: str, error: str, *, due_at: int | None = None) -> None:
        """An attempt failed (or found it not due: ``due_at`` is when to look again)."""
        ...

    async def done(self, address: str, outcome: str) -> None:
        """The escrow is closed (``outcome`` says by what); nothing more will be attempted."""
        ...
