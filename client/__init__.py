"""dgpu.client: rent GPUs from Python.

``Client`` (async, trio) runs an in-process renter node; ``SyncClient`` is its blocking twin for
notebooks and scripts. See the README for examples. Everything not in ``__all__`` is private.
"""

from .client import Client as Client
from .client import OfferInfo as OfferInfo
from .client import Rental as Rental
from .client import RentalResult as RentalResult
from .errors import ClientError as ClientError
from .errors import EscrowFailed as EscrowFailed
from .errors import JobFailed as JobFailed
from .errors import LedgerUnavailable as LedgerUnavailable
from .errors import NegotiationFailed as NegotiationFailed
from .errors import NoOffersError as NoOffersError
from .sync import SyncClient as SyncClient

__all__ = [
    "Client",
    "ClientError",
    "EscrowFailed",
    "JobFailed",
    "LedgerUnavailable",
    "NegotiationFailed",
    "NoOffersError",
    "OfferInfo",
    "Rental",
    "RentalResult",
    "SyncClient",
]
