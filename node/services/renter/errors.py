"""The errors of the renter workflow; ``dgpu.client`` re-exports them (``ClientError`` is
``RenterError``). Everything below is converted once, in the workflow.

::

    RenterError                  anything the renter workflow raises on purpose
    ├── NoOffersError            nothing matched the query within the wait
    ├── NegotiationFailed        the provider refused (``.code`` is the RejectCode) or broke the protocol
    ├── EscrowFailed             the ledger refused or could not be reached (``.code`` when refused)
    ├── JobFailed                the job stream ended without a final status (provider died or hung)
    └── NotConnected             the workflow was used after its node stopped (the client is closed)
"""

from __future__ import annotations

__all__ = ["EscrowFailed", "JobFailed", "NegotiationFailed", "NoOffersError", "NotConnected", "RenterError"]


class RenterError(Exception):
    """Base of every error the renter workflow (and so ``dgpu.client``) raises on purpose."""


class NoOffersError(RenterError):
    """No offer matched the query in time."""


class NegotiationFailed(RenterError):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(f"{message} ({code})" if code else message)
        self.code = code


class EscrowFailed(RenterError):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(f"{message} ({code})" if code else message)
        self.code = code


class JobFailed(RenterError):
    """The job's stream ended without a final status; the escrow is still recoverable."""


class NotConnected(RenterError):
    """The renter's node is not running."""
