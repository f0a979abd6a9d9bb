"""The bootstrap node's HTTP app: wallet-signed auth, blob pinning, storage keys, /metrics.

``create_app(config, extra_routers=...)`` builds a FastAPI app; serve it with
``dgpu.node.adapters.http_server.serve_http``. Other parts (the development ledger) mount their
routers through ``extra_routers`` and protect them with the dependencies of ``http_state``
(``authenticated``, ``require_role``).

Layout: ``http_state`` (the shared state and route guards), ``schemas`` (bodies), ``uploads``
(streaming into staging), ``routes/*`` (one router per resource: auth, admin, blobs, objects,
ops); this module assembles them with the shared error format and middleware.

Boundary rules: every error leaves as ``{"error": {"code", "message"}}`` (see ``errors.py``);
request bodies are bounded (JSON bodies by ``MAX_JSON_BODY``, uploads by the configured limits
while streaming); tokens, refresh tokens, signatures and link signatures never appear in logs
or error messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from dgpu.node.adapters.http_server import (
    BodyLimitMiddleware,
    RouteTimingMiddleware,
    error_response,
    install_error_handlers,
)

from .auth import TokenIssuer
from .config import BootstrapHttpConfig, load_or_create_node_key
from .errors import StoreError
from .http_state import BootstrapState, limit_ip
from .metrics import Metrics
from .ratelimit import TokenBucketLimiter
from .routes import admin, auth, blobs, objects, ops, push
from .storage import BlobStore, FsBlobStore, KeyedLock, LinkSigner, Staging
from .upload_links import PUSH_PREFIX, UploadLinkSigner

__all__ = ["MAX_JSON_BODY", "create_app"]

log = logging.getLogger(__name__)

# JSON request bodies are tiny (a wallet, a nonce, a signature); anything bigger is refused
# before it is buffered. Upload routes stream and enforce their own limits.
MAX_JSON_BODY = 64 * 1024
_STREAMING_PREFIXES = ("/api/v1/blobs", "/api/v1/storage/", PUSH_PREFIX)


# -- errors --------------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def count(code: str) -> None:
        metrics.rejections.labels(code).inc()

    install_error_handlers(app, on_reject=count)

    async def on_store_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StoreError)
        count(exc.code)
        log.error("storage backend failure on %s %s: %s", request.method, request.url.path, exc)
        return error_response(exc.status, exc.code, "the storage backend failed; try again later")

    app.add_exception_handler(StoreError, on_store_error)


# -- the app -------------------------------------------------------------------------------------


def _default_store(config: BootstrapHttpConfig, staging: Staging) -> Callable[[], BlobStore]:
    if config.store == "s3":
        from .s3 import S3BlobStore

        s3 = config.s3
        if s3 is None:
            raise ValueError("store = 's3' needs an [s3] section")
        return lambda: S3BlobStore(s3)
    return lambda: FsBlobStore(config.data_dir / "store")


def create_app(
    config: BootstrapHttpConfig,
    *,
    extra_routers: Iterable[APIRouter] = (),
    clock: Callable[[], float] = time.time,
    node_key: Ed25519PrivateKey | None = None,
    store_factory: Callable[[], BlobStore] | None = None,
) -> FastAPI:
    """Build the bootstrap HTTP app.

    ``extra_routers`` are mounted after the built-in ones, behind the same per-IP rate limit,
    error format and metrics; protect their routes with ``Depends(authenticated)`` or
    ``Depends(require_role(...))``. ``clock`` (seconds since the epoch) is injectable so tests
    can expire challenges, tokens and links without waiting. ``node_key`` defaults to the key
    file named by the config (created if missing).
    """
    key = node_key if node_key is not None else load_or_create_node_key(config.resolved_key_path)
    metrics = Metrics()
    staging = Staging(config.data_dir / "store" / "tmp")
    # The link secret is derived from the node key, so links survive restarts without a
    # second secret to manage, and cannot be confused with any other use of the key.
    link_secret = hashlib.sha256(b"dgpu/1/link-key\0" + key.private_bytes_raw()).digest()
    state = BootstrapState(
        config=config,
        clock=clock,
        metrics=metrics,
        issuer=TokenIssuer(key, config.issuer, config.audience, config.access_ttl_s),
        links=LinkSigner(link_secret),
        upload_links=UploadLinkSigner(hashlib.sha256(b"dgpu/1/upload-key\0" + link_secret).digest()),
        ip_limiter=TokenBucketLimiter(
            config.ip_rate_per_s, config.ip_burst, config.rate_limit_max_keys
        ),
        wallet_limiter=TokenBucketLimiter(
            config.wallet_rate_per_s, config.wallet_burst, config.rate_limit_max_keys
        ),
        staging=staging,
        cid_locks=KeyedLock(),
        store_factory=store_factory or _default_store(config, staging),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.open()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="dGPU bootstrap node",
        version="1",
        lifespan=lifespan,
        description="Wallet-signed auth, content-addressed storage pinning, metrics.",
    )
    app.state.bootstrap = state
    limited = [Depends(limit_ip)]
    for router in (auth.router(), admin.router(), blobs.router(), objects.router(), push.router()):
        app.include_router(router, dependencies=limited)
    for router in extra_routers:
        app.include_router(router, dependencies=limited)

    app.include_router(ops.router())

    _install_error_handlers(app, metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_JSON_BODY,
                       exempt_prefixes=_STREAMING_PREFIXES)
    app.add_middleware(RouteTimingMiddleware, observe=metrics.observe_request)
    return app
