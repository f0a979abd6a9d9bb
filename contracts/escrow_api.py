"""The escrow interface both ledgers implement: defined in :mod:`dgpu.protocol.ledger`.

Kept so ``dgpu.contracts.escrow_api`` (and the ``dgpu.contracts`` re-exports) go on naming the
same objects; the definitions live in the protocol package so that the node's services can
depend on the interface without loading a ledger client (see that module's docstring).
"""

from __future__ import annotations

from dgpu.protocol.ledger import Action, EscrowHandle, EscrowLedger, EscrowReceipt, EscrowView, MintInfo, Settlement

__all__ = [
    "Action",
    "EscrowHandle",
    "EscrowLedger",
    "EscrowReceipt",
    "EscrowView",
    "MintInfo",
    "Settlement",
]
