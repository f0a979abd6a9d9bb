"""Service logic behind the node's local HTTP API (``adapters/http_api/`` is its only caller).

Rules: no I/O here except through injected ports: the job backend (``JobBackend``: the renter
workflow over the network, or a test double), the ledger (``EscrowLedger``) and the node's own
offer publisher / negotiator, which ``ProviderControl`` wraps but never replaces. Services
return the wire models of ``schema.py``; the adapter sends them as they are. Money is integers
of the mint's base unit; ``Decimal`` appears only in display strings.

- ``errors``: the ApiError tree (the adapter maps each class to a status)
- ``settings``: ``ApiSettings``
- ``schema``: every request and answer model (the CLI parses answers with them too)
- ``jobs``: API jobs and their bounded, supervised manager; ``job_backend``: the real backend
- ``market``: the marketplace and the pricing estimate; ``wallet``: the node's wallet
- ``providers``: this node's provider profile and pause switch
"""

from typing import TYPE_CHECKING

from dgpu._lazy import lazy_exports

if TYPE_CHECKING:
    from .errors import ApiError as ApiError
    from .errors import Busy as Busy
    from .errors import Conflict as Conflict
    from .errors import Forbidden as Forbidden
    from .errors import JobRunError as JobRunError
    from .errors import NotFound as NotFound
    from .errors import NotImplementedOnLedger as NotImplementedOnLedger
    from .errors import Unavailable as Unavailable
    from .job_backend import NetworkJobBackend as NetworkJobBackend
    from .jobs import ApiJob as ApiJob
    from .jobs import JobBackend as JobBackend
    from .jobs import JobFinal as JobFinal
    from .jobs import JobManager as JobManager
    from .market import MAX_PAGE as MAX_PAGE
    from .market import MarketQuery as MarketQuery
    from .market import hidden_simulated as hidden_simulated
    from .market import market_page as market_page
    from .market import offer_rows as offer_rows
    from .market import price_estimate as price_estimate
    from .providers import ProviderControl as ProviderControl
    from .schema import ApiJobState as ApiJobState
    from .schema import EstimateIn as EstimateIn
    from .schema import JobSpec as JobSpec
    from .schema import ProviderProfile as ProviderProfile
    from .schema import format_amount as format_amount
    from .settings import ApiSettings as ApiSettings
    from .wallet import WalletService as WalletService

# lazily: bootstrap_client needs only ``errors``, not the renter workflow behind ``job_backend``
__getattr__ = lazy_exports(__name__, globals(), {
    "ApiError": "errors",
    "Busy": "errors",
    "Conflict": "errors",
    "Forbidden": "errors",
    "JobRunError": "errors",
    "NotFound": "errors",
    "NotImplementedOnLedger": "errors",
    "Unavailable": "errors",
    "NetworkJobBackend": "job_backend",
    "ApiJob": "jobs",
    "JobBackend": "jobs",
    "JobFinal": "jobs",
    "JobManager": "jobs",
    "MAX_PAGE": "market",
    "MarketQuery": "market",
    "hidden_simulated": "market",
    "market_page": "market",
    "offer_rows": "market",
    "price_estimate": "market",
    "ProviderControl": "providers",
    "ApiJobState": "schema",
    "EstimateIn": "schema",
    "JobSpec": "schema",
    "ProviderProfile": "schema",
    "format_amount": "schema",
    "ApiSettings": "settings",
    "WalletService": "wallet",
})

__all__ = [
    "MAX_PAGE",
    "ApiError",
    "ApiJob",
    "ApiJobState",
    "ApiSettings",
    "Busy",
    "Conflict",
    "EstimateIn",
    "Forbidden",
    "JobBackend",
    "JobFinal",
    "JobManager",
    "JobRunError",
    "JobSpec",
    "MarketQuery",
    "NetworkJobBackend",
    "NotFound",
    "NotImplementedOnLedger",
    "ProviderControl",
    "ProviderProfile",
    "Unavailable",
    "WalletService",
    "format_amount",
    "hidden_simulated",
    "market_page",
    "offer_rows",
    "price_estimate",
]
