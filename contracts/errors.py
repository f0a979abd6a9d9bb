"""The errors of ``dgpu.contracts``: one tree for both ledgers, converted once in each adapter.

::

    ContractsError                     anything this package raises on purpose
    ├── LedgerError                    the ledger refused the instruction; nothing changed
    │   ├── EscrowRefused              an escrow rule refused it; ``.code`` is the shared EscrowErrorCode
    │   ├── ProgramError               an on-chain-only check (wrong mint, vault, same party, ...); ``.name``
    │   ├── InsufficientFunds          the payer's token account holds less than the transfer
    │   └── EscrowNotFound             no escrow at that address
    ├── RequestRejected                the ledger refused the *request* itself (``.reason``): bad signature,
    │                                  replay, expired or malformed envelope, faucet limit, not in test mode
    ├── TransportError                 the ledger could not be reached or answered nonsense (HTTP, RPC)
    │   └── LedgerTimeout              no answer within the timeout
    └── ConfirmationError              a transaction was sent but did not confirm (``.signature``)
        └── ConfirmationTimeout        not confirmed before the deadline: it may still land later

``EscrowRefused`` is what the billing service branches on (``exc.code is
EscrowErrorCode.NOTHING_TO_CLAIM`` and so on); ``TransportError`` and ``ConfirmationTimeout`` mean
"state unknown, fetch before retrying". Messages never hold keys, signatures or request bodies.
"""

from __future__ import annotations

from dgpu.protocol.errors import EscrowErrorCode

__all__ = [
    "ConfirmationError",
    "ConfirmationTimeout",
    "ContractsError",
    "EscrowNotFound",
    "EscrowRefused",
    "InsufficientFunds",
    "LedgerError",
    "LedgerTimeout",
    "ProgramError",
    "RequestRejected",
    "TransportError",
]


class ContractsError(Exception):
    """Base of every error this package raises on purpose."""


class LedgerError(ContractsError):
    """The ledger refused the instruction; balances and escrow are unchanged."""


class EscrowRefused(LedgerError):
    """An escrow rule (docs/escrow-rules.md) refused the instruction."""

    def __init__(self, code: EscrowErrorCode, detail: str = "") -> None:
        super().__init__(f"{code.value}: {detail}" if detail else code.value)
        self.code = code
        self.detail = detail


class ProgramError(LedgerError):
    """The on-chain program refused with one of its account checks (no ledger-model counterpart)."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name
        self.detail = detail


class InsufficientFunds(LedgerError):
    """The paying token account holds less than the amount to move."""


class EscrowNotFound(LedgerError):
    """There is no escrow at that address (never opened, or another ledger's address)."""


class RequestRejected(ContractsError):
    """The ledger refused the request before looking at the instruction (``reason`` says why)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class TransportError(ContractsError):
    """The ledger could not be reached, or its answer was not understood; state is unknown."""


class LedgerTimeout(TransportError):
    """The ledger did not answer in time; the request may or may not have been applied."""


class ConfirmationError(ContractsError):
    """A transaction was sent but failed to confirm."""

    def __init__(self, message: str, signature: str | None = None) -> None:
        super().__init__(message)
        self.signature = signature


class ConfirmationTimeout(ConfirmationError):
    """Not confirmed before the deadline; it may still land, so fetch the escrow before retrying."""
