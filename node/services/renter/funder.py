"""The renter's side of money before work: open the escrow a quote asks for, before accepting."""

from __future__ import annotations

from collections.abc import Callable

from dgpu.node.services.renter.errors import EscrowFailed
from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.ledger import ContractsError, EscrowHandle, EscrowLedger, EscrowRefused
from dgpu.protocol.messages import EscrowRef, Quote

__all__ = ["LedgerFunder"]


class LedgerFunder:
    """Opens the escrow a quote asks for, on the renter's ledger, before the renter accepts."""

    def __init__(self, ledger: EscrowLedger, rental_id: Callable[[], int]) -> None:
        self.ledger = ledger
        self._rental_id = rental_id
        self.handle: EscrowHandle | None = None

    async def fund(self, quote: Quote) -> EscrowRef:
        if quote.ledger != self.ledger.ledger:
            raise EscrowFailed(f"the provider wants ledger {quote.ledger!r}, we use {self.ledger.ledger!r}")
        attempts = 3
        for attempt in range(attempts):
            try:
                receipt = await self.ledger.open(self._rental_id(), quote.provider, quote.rate_per_minute,
                                                 quote.max_minutes, quote.start_deadline)
                break
            except EscrowRefused as exc:
                # rental ids of a renter must increase: a concurrent open landed a higher one first
                if exc.code is EscrowErrorCode.RENTAL_ID_USED and attempt + 1 < attempts:
                    continue
                raise EscrowFailed("the ledger refused the deposit", exc.code.value) from exc
            except ContractsError as exc:
                raise EscrowFailed(f"could not open the escrow: {exc}") from exc
        self.handle = receipt.escrow
        return receipt.escrow.to_ref()
