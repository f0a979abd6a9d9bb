"""The errors a renter sees from ``dgpu.client``; everything below is converted once, here.

::

    ClientError                  anything the client raises on purpose
    ├── NoOffersError            nothing matched the query within the wait
    ├── NegotiationFailed        the provider refused (``.code`` is the RejectCode) or broke the protocol
    ├── EscrowFailed             the ledger refused or could not be reached (``.code`` when refused)
    ├── JobFailed                the job stream ended without a final status (provider died or hung)
    └── NotConnected             the client was used outside ``Client.connect`` / after close
"""

from __future__ import annotations

__all__ = ["ClientError", "EscrowFailed", "JobFailed", "NegotiationFailed", "NoOffersError", "NotConnected"]


class ClientError(Exception):
    """Base of every error ``dgpu.client`` raises on purpose."""


class NoOffersError(ClientError):
    """No offer matched the query in time."""


class NegotiationFailed(ClientError):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(f"{message} ({code})" if code else message)
        self.code = code


class EscrowFailed(ClientError):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(f"{message} ({code})" if code else message)
        self.code = code


class JobFailed(ClientError):
    """The job's stream ended without a final status; the escrow is still recoverable."""


class NotConnected(ClientError):
    """The client's node is not running."""
