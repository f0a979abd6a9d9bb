"""dgpu.client: rent GPUs from Python.

``Client`` (async, trio) runs an in-process renter node; ``SyncClient`` is its blocking twin for
notebooks and scripts. See the README for examples. Everything not in ``__all__`` is private.
"""

from typing import TYPE_CHECKING

from dgpu._lazy import lazy_exports

if TYPE_CHECKING:
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

# lazily: ``dgpu.client.main`` (every command, providers too) must not load the renter library
__getattr__ = lazy_exports(__name__, globals(), {
    "Client": "client",
    "OfferInfo": "client",
    "Rental": "client",
    "RentalResult": "client",
    "ClientError": "errors",
    "EscrowFailed": "errors",
    "JobFailed": "errors",
    "LedgerUnavailable": "errors",
    "NegotiationFailed": "errors",
    "NoOffersError": "errors",
    "SyncClient": "sync",
})

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
