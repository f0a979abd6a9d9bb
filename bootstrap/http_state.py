"""What the bootstrap's routes share: the app state and the dependencies that guard routes.

``authenticated`` (a verified, unrevoked bearer token, plus a per-wallet rate limit) and
``require_role(...)`` protect routes; other parts (the development ledger) use them too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from dgpu.protocol.auth import AccessClaims, Role

from .auth import AuthService, TokenIssuer
from .config import BootstrapHttpConfig
from .db import AsyncDB, SyncDB
from .errors import Forbidden, RateLimited, Unauthorized
from .metrics import Metrics
from .ratelimit import TokenBucketLimiter
from .storage import BlobStore, KeyedLock, LinkSigner, Staging
from .upload_links import UploadLinkSigner

__all__ = [
    "MAX_LIST",
    "BootstrapState",
    "Claims",
    "State",
    "authenticated",
    "get_state",
    "limit_ip",
    "require_role",
]

MAX_LIST = 1000  # page size bound for list endpoints


@dataclass
class BootstrapState:
    """Everything the routes share; built by ``create_app``, opened by the app's lifespan."""

    config: BootstrapHttpConfig
    clock: Callable[[], float]
    metrics: Metrics
    issuer: TokenIssuer
    links: LinkSigner
    upload_links: UploadLinkSigner
    ip_limiter: TokenBucketLimiter
    wallet_limiter: TokenBucketLimiter
    staging: Staging
    cid_locks: KeyedLock
    store_factory: Callable[[], BlobStore]
    _db: AsyncDB | None = None
    _auth: AuthService | None = None
    _store: BlobStore | None = None

    @property
    def db(self) -> AsyncDB:
        if self._db is None:
            raise RuntimeError("the app's lifespan has not started")
        return self._db

    @property
    def auth(self) -> AuthService:
        if self._auth is None:
            raise RuntimeError("the app's lifespan has not started")
        return self._auth

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            raise RuntimeError("the app's lifespan has not started")
        return self._store

    async def open(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.staging.clear()
        self._db = AsyncDB(SyncDB(self.config.data_dir / "bootstrap.sqlite3"))
        self._auth = AuthService(self.config, self._db, self.issuer, self.metrics, self.clock)
        self._store = self.store_factory()

    async def close(self) -> None:
        if self._store is not None:
            await self._store.aclose()
        if self._db is not None:
            await self._db.close()

    def limit(self, limiter: TokenBucketLimiter, key: str, what: str) -> None:
        wait = limiter.acquire(key, self.clock())
        if wait > 0:
            raise RateLimited(
                f"too many requests from this {what}, slow down",
                retry_after=TokenBucketLimiter.retry_after_header(wait),
                code=f"rate_limited_{what}",
            )


def get_state(request: Request) -> BootstrapState:
    state: BootstrapState = request.app.state.bootstrap
    return state


State = Annotated[BootstrapState, Depends(get_state)]


async def limit_ip(request: Request, state: State) -> None:
    """Router dependency: one token per request from the client's IP address."""
    host = request.client.host if request.client is not None else "unknown"
    state.limit(state.ip_limiter, host, "ip")


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token", code="missing_token")
    return token.strip()


async def authenticated(request: Request, state: State) -> AccessClaims:
    """Dependency: the verified claims of the bearer token (and a per-wallet rate limit)."""
    claims = await state.auth.authenticate(bearer(request))
    state.limit(state.wallet_limiter, claims.wallet, "wallet")
    return claims


Claims = Annotated[AccessClaims, Depends(authenticated)]


def require_role(*roles: Role) -> Callable[[AccessClaims], Awaitable[AccessClaims]]:
    """Dependency factory: the caller's token must carry one of ``roles``."""
    allowed = frozenset(roles)

    async def check(claims: Claims) -> AccessClaims:
        if claims.role not in allowed:
            raise Forbidden("this route needs another role", code="wrong_role")
        return claims

    return check
