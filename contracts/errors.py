"""The errors of ``dgpu.contracts``: one tree for both ledgers, converted once in each adapter.

The tree (drawn in :mod:`dgpu.protocol.ledger`, where it is defined next to the ``EscrowLedger``
port that raises it) is re-exported here so ``dgpu.contracts.errors`` keeps naming it.
"""

from __future__ import annotations

from dgpu.protocol.ledger import (
    ConfirmationError,
    ConfirmationTimeout,
    ContractsError,
    EscrowNotFound,
    EscrowRefused,
    InsufficientFunds,
    LedgerBusy,
    LedgerError,
    LedgerTimeout,
    LedgerUnavailable,
    ProgramError,
    RequestRejected,
    TransportError,
)

__all__ = [
    "ConfirmationError",
    "ConfirmationTimeout",
    "ContractsError",
    "EscrowNotFound",
    "EscrowRefused",
    "InsufficientFunds",
    "LedgerBusy",
    "LedgerError",
    "LedgerTimeout",
    "LedgerUnavailable",
    "ProgramError",
    "RequestRejected",
    "TransportError",
]
