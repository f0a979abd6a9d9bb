"""The renter workflow (``rental.py``; funding in ``funder.py``, how a rental ended in
``result.py``) and its errors (``errors.py``).

``dgpu.client`` (``Client``, ``SyncClient``) and the node's local HTTP API (its job backend)
both rent through :class:`Renter`; neither depends on the other.
"""

from .errors import EscrowFailed as EscrowFailed
from .errors import JobFailed as JobFailed
from .errors import NegotiationFailed as NegotiationFailed
from .errors import NoOffersError as NoOffersError
from .errors import NotConnected as NotConnected
from .errors import RenterError as RenterError
from .funder import LedgerFunder as LedgerFunder
from .inputs import InputRefused as InputRefused
from .inputs import resolve_input as resolve_input
from .offer_info import OfferInfo as OfferInfo
from .rental import Rental as Rental
from .rental import Renter as Renter
from .result import RentalResult as RentalResult

__all__ = [
    "EscrowFailed",
    "InputRefused",
    "JobFailed",
    "LedgerFunder",
    "NegotiationFailed",
    "NoOffersError",
    "NotConnected",
    "OfferInfo",
    "Rental",
    "RentalResult",
    "Renter",
    "RenterError",
    "resolve_input",
]
