"""The errors a renter sees from ``dgpu.client``: those of the renter workflow
(``dgpu.node.services.renter.errors``, where they are converted once), under the client's names.

::

    ClientError                  anything the client raises on purpose (the workflow's RenterError)
    ├── NoOffersError            nothing matched the query within the wait
    ├── NegotiationFailed        the provider refused (``.code`` is the RejectCode) or broke the protocol
    ├── EscrowFailed             the ledger refused or could not be reached (``.code`` when refused)
    ├── JobFailed                the job stream ended without a final status (provider died or hung)
    └── NotConnected             the client was used outside ``Client.connect`` / after close

    LedgerUnavailable            (a ledger error, ``dgpu.protocol.ledger``, not a ClientError) the ledger
                                 could not be reached to settle a rental's escrow; the message says what
                                 happens next (the node retries; anyone may settle after expiry)
"""

from __future__ import annotations

from dgpu.node.services.renter.errors import EscrowFailed, JobFailed, NegotiationFailed, NoOffersError, NotConnected
from dgpu.node.services.renter.errors import RenterError as ClientError
from dgpu.protocol.ledger import LedgerUnavailable

__all__ = ["ClientError", "EscrowFailed", "JobFailed", "LedgerUnavailable", "NegotiationFailed", "NoOffersError",
           "NotConnected"]
