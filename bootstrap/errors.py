"""Errors of the bootstrap node's HTTP services.

Every error a client can cause is an ``ApiError``: it carries the HTTP status, a stable
machine-readable ``code`` and a message safe to show (never a key, token, signature or secret).
The client errors common to every dGPU HTTP server (``ApiError`` and its generic subclasses) are
defined once in ``dgpu.node.adapters.http_server`` and re-exported here; the boundary
(``install_error_handlers``) turns them into ``{"error": {"code": ..., "message": ...}}`` once;
library exceptions (sqlite3, OSError, httpx, pyjwt) are converted to these where the
library is called, with ``raise ... from exc``.

    BootstrapError
    ├── ConfigError                 bad configuration or node key file (raised at startup)
    └── StoreError                  a storage backend failed (disk, S3): answered 502/507
        └── S3Error                 the S3-compatible endpoint refused or failed a request

    ApiError (http_server)          a request the client can fix; status + code
        ├── BadRequest              400 malformed input (bad cid, bad key, bad wallet)
        ├── Unauthorized            401 no, malformed, forged, expired or revoked credentials
        ├── Forbidden               403 authenticated but not allowed (role, not registered)
        ├── NotFound                404
        ├── PayloadTooLarge         413 upload over the per-upload size limit
        ├── QuotaExceeded           413 upload would exceed the wallet's byte quota
        ├── HashMismatch            422 uploaded bytes do not hash to the claimed cid
        └── RateLimited             429 token bucket empty; carries retry_after seconds
"""

from __future__ import annotations

from dgpu.node.adapters.http_server import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
)

__all__ = [
    "ApiError",
    "BadRequest",
    "BootstrapError",
    "ConfigError",
    "Forbidden",
    "HashMismatch",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "S3Error",
    "StoreError",
    "Unauthorized",
]


class BootstrapError(Exception):
    """Base of the bootstrap node's own failures (what a client can fix is an ``ApiError``)."""


class ConfigError(BootstrapError):
    """The configuration or the node key file is unusable."""


class StoreError(BootstrapError):
    """A storage backend failed; nothing was committed by the failing operation."""

    status = 502
    code = "store_unavailable"


class S3Error(StoreError):
    """The S3-compatible endpoint refused or failed a request."""


class QuotaExceeded(ApiError):
    status = 413
    code = "quota_exceeded"


class HashMismatch(ApiError):
    status = 422
    code = "hash_mismatch"
