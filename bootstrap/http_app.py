"""The bootstrap node's HTTP app: wallet-signed auth, blob pinning, storage keys, /metrics.

``create_app(config, extra_routers=...)`` builds a FastAPI app; serve it with
``dgpu.node.adapters.http_server.serve_http``. Other parts (the development ledger) mount their
routers through ``extra_routers`` and protect them with the dependencies exported here
(``authenticated``, ``require_role``).

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dgpu.node.adapters.http_server import (
    BodyLimitMiddleware,
    RouteTimingMiddleware,
    error_response,
    install_error_handlers,
)
from dgpu.node.adapters.storage_names import validate_bucket, validate_cid, validate_key
from dgpu.protocol.auth import (
    DOMAINS,
    AccessClaims,
    ChallengeIn,
    ChallengeOut,
    MeOut,
    RefreshIn,
    RegisterOut,
    Role,
    SignedIn,
    TokenOut,
)

from .auth import AuthService, TokenIssuer, TokenPair
from .config import BootstrapHttpConfig, load_or_create_node_key
from .db import AsyncDB, SyncDB
from .errors import (
    ApiError,
    BadRequest,
    Forbidden,
    HashMismatch,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    StoreError,
    Unauthorized,
)
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .ratelimit import TokenBucketLimiter
from .storage import (
    BlobStore,
    FsBlobStore,
    KeyedLock,
    LinkSigner,
    Staged,
    Staging,
)

__all__ = [
    "BootstrapState",
    "authenticated",
    "create_app",
    "get_state",
    "require_role",
]

log = logging.getLogger(__name__)

# JSON request bodies are tiny (a wallet, a nonce, a signature); anything bigger is refused
# before it is buffered. Upload routes stream and enforce their own limits.
MAX_JSON_BODY = 64 * 1024
_STREAMING_PREFIXES = ("/api/v1/blobs", "/api/v1/storage/")
_MAX_LIST = 1000  # page size bound for list endpoints


# -- state ---------------------------------------------------------------------------------------


@dataclass
class BootstrapState:
    """Everything the routes share; built by ``create_app``, opened by the app's lifespan."""

    config: BootstrapHttpConfig
    clock: Callable[[], float]
    metrics: Metrics
    issuer: TokenIssuer
    links: LinkSigner
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


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token", code="missing_token")
    return token.strip()


async def authenticated(request: Request, state: State) -> AccessClaims:
    """Dependency: the verified claims of the bearer token (and a per-wallet rate limit)."""
    claims = await state.auth.authenticate(_bearer(request))
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


# -- request / response models -------------------------------------------------------------------


def _token_out(pair: TokenPair) -> TokenOut:
    return TokenOut(
        access_token=pair.access_token,
        expires_at=pair.access_expires_at,
        refresh_token=pair.refresh_token,
        refresh_expires_at=pair.refresh_expires_at,
        role=pair.role.value,
        wallet=pair.wallet,
    )


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BlobOut(BaseModel):
    cid: str
    size: int


class PinOut(BaseModel):
    cid: str
    size: int
    pinned_at: float


class PinsOut(BaseModel):
    pins: list[PinOut]
    usage_bytes: int
    quota_bytes: int


class LinkIn(_In):
    ttl_s: int = Field(default=3600, gt=0)


class LinkOut(BaseModel):
    url: str
    expires_at: int


class ObjectOut(BaseModel):
    bucket: str
    key: str
    cid: str
    size: int
    updated_at: float


class ObjectsOut(BaseModel):
    objects: list[ObjectOut]


class WalletRoleOut(BaseModel):
    wallet: str
    role: str


class RevokeOut(BaseModel):
    revoked_sessions: int


# -- uploads -------------------------------------------------------------------------------------


async def _ingest(
    state: BootstrapState,
    request: Request,
    wallet: str,
    expected_cid: str | None,
    commit: Callable[[Staged], Awaitable[None]],
) -> Staged:
    """Stream the request body into staging, verify it, then ``commit`` it under the cid lock.

    On any refusal or error the staged file is deleted and nothing is recorded.
    """
    cfg = state.config
    usage = await state.db.run(state.db.sync.usage, wallet)
    remaining = max(0, cfg.quota_bytes - usage)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise BadRequest("bad Content-Length", code="bad_length") from None
        _check_size(declared_size, cfg.max_upload_bytes, remaining)
    async with state.staging.spool() as spool:
        # request.stream() yields the body as the server receives it (~64 KiB pieces): the
        # memory held per upload is bounded by the spool's buffer, not by the body.
        async for chunk in request.stream():
            _check_size(spool.size + len(chunk), cfg.max_upload_bytes, remaining)
            await spool.write(chunk)
        staged = await spool.finish()
        if expected_cid is not None and staged.cid != expected_cid:
            raise HashMismatch("the uploaded bytes do not hash to the cid; nothing was kept")
        async with state.cid_locks.hold(staged.cid):
            await commit(staged)
    return staged


def _check_size(size: int, max_upload: int, remaining: int) -> None:
    if size > max_upload:
        raise PayloadTooLarge(f"uploads are limited to {max_upload} bytes")
    if size > remaining:
        raise QuotaExceeded("this upload would exceed the wallet's storage quota")


async def _store_if_new(state: BootstrapState, staged: Staged) -> bool:
    """Hand the staged file to the store unless the blob is already known; True if stored."""
    if await state.db.run(state.db.sync.blob_size, staged.cid) is not None:
        return False
    await state.store.put_staged(staged)
    return True


async def _release(state: BootstrapState, cid: str) -> None:
    """Delete the blob's bytes if no pin or object references it any more."""
    async with state.cid_locks.hold(cid):
        if await state.db.run(state.db.sync.release, cid):
            await state.store.delete(cid)


def _stream_blob(state: BootstrapState, cid: str, size: int) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in state.store.read(cid):
            state.metrics.download_bytes.inc(len(chunk))
            yield chunk

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={
            "content-length": str(size),
            "etag": f'"{cid}"',
            "cache-control": "private, max-age=0",
        },
    )


# -- routers -------------------------------------------------------------------------------------


def _auth_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

    @router.post("/challenge", response_model=ChallengeOut)
    async def challenge(body: ChallengeIn, state: State) -> ChallengeOut:
        state.limit(state.wallet_limiter, body.wallet, "wallet")
        ch = state.auth.challenge(body.wallet, body.action, body.role)
        domain = DOMAINS[ch.action]
        return ChallengeOut(
            nonce=ch.nonce,
            expires_at=ch.expires_at,
            message=ch.canonical().decode("ascii"),
            domain=domain.decode("ascii"),
            signing_bytes_hex=(domain + ch.canonical()).hex(),
        )

    @router.post("/login", response_model=TokenOut)
    async def login(body: SignedIn, state: State) -> TokenOut:
        state.limit(state.wallet_limiter, body.wallet, "wallet")
        return _token_out(await state.auth.login(body.wallet, body.nonce, body.signature))

    @router.post("/register", response_model=RegisterOut)
    async def register(body: SignedIn, state: State) -> RegisterOut:
        state.limit(state.wallet_limiter, body.wallet, "wallet")
        role = await state.auth.register(body.wallet, body.nonce, body.signature)
        return RegisterOut(wallet=body.wallet, role=role.value)

    @router.post("/refresh", response_model=TokenOut)
    async def refresh(body: RefreshIn, state: State) -> TokenOut:
        return _token_out(await state.auth.refresh(body.refresh_token))

    @router.post("/logout", status_code=204)
    async def logout(body: RefreshIn, state: State) -> Response:
        await state.auth.logout(body.refresh_token)
        return Response(status_code=204)

    @router.get("/jwks")
    async def jwks(state: State) -> dict[str, Any]:
        """The bootstrap node's token-signing public key (JWK Set); kid = base58 public key."""
        return {**state.issuer.jwks(), "issuer": state.issuer.issuer,
                "audience": state.issuer.audience}

    @router.get("/me", response_model=MeOut)
    async def me(claims: Claims) -> MeOut:
        return MeOut(wallet=claims.wallet, role=claims.role.value, expires_at=claims.expires_at)

    return router


def _admin_router() -> APIRouter:
    router = APIRouter(
        prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(require_role(Role.ADMIN))]
    )

    @router.get("/wallets", response_model=list[WalletRoleOut])
    async def wallets(
        state: State,
        after: Annotated[str, Query(max_length=64)] = "",
        limit: Annotated[int, Query(gt=0, le=_MAX_LIST)] = 100,
    ) -> list[WalletRoleOut]:
        rows = await state.db.run(state.db.sync.list_roles, limit, after)
        return [WalletRoleOut(wallet=w, role=r) for w, r in rows]

    @router.post("/wallets/{wallet}/revoke", response_model=RevokeOut)
    async def revoke(wallet: str, state: State) -> RevokeOut:
        return RevokeOut(revoked_sessions=await state.auth.revoke_wallet(wallet))

    return router


def _blob_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["storage"])

    async def pin_staged(state: BootstrapState, wallet: str, staged: Staged) -> None:
        stored = await _store_if_new(state, staged)
        try:
            await state.db.run(
                state.db.sync.pin,
                wallet,
                staged.cid,
                size=staged.size,
                now=state.clock(),
                quota=state.config.quota_bytes,
            )
        except QuotaExceeded:
            if stored:  # under the cid lock, and no row references it: safe to delete
                await state.store.delete(staged.cid)
            raise

    async def upload(state: BootstrapState, request: Request, wallet: str, cid: str | None) -> BlobOut:
        try:
            staged = await _ingest(
                state, request, wallet, cid, lambda s: pin_staged(state, wallet, s)
            )
        except ApiError as exc:
            state.metrics.uploads.labels(exc.code).inc()
            raise
        state.metrics.uploads.labels("ok").inc()
        state.metrics.upload_bytes.inc(staged.size)
        return BlobOut(cid=staged.cid, size=staged.size)

    @router.put(
        "/blobs/{cid}", response_model=BlobOut, status_code=201,
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}},
    )
    async def put_blob(cid: str, request: Request, claims: Claims, state: State) -> BlobOut:
        """Upload and pin a blob; the body must hash to ``cid`` (sha256-<hex>)."""
        validate_cid(cid)
        return await upload(state, request, claims.wallet, cid)

    @router.post(
        "/blobs", response_model=BlobOut, status_code=201,
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}},
    )
    async def post_blob(request: Request, claims: Claims, state: State) -> BlobOut:
        """Upload and pin a blob; answers its cid."""
        return await upload(state, request, claims.wallet, None)

    @router.get("/blobs/{cid}", response_class=StreamingResponse)
    async def get_blob(
        cid: str,
        request: Request,
        state: State,
        expires: Annotated[int | None, Query()] = None,
        sig: Annotated[str | None, Query(max_length=128)] = None,
    ) -> StreamingResponse:
        """Stream a blob: with a bearer token of a wallet holding it, or a signed link."""
        validate_cid(cid)
        if sig is not None or expires is not None:
            if sig is None or expires is None:
                raise Forbidden("invalid download link", code="link_invalid")
            state.links.check(cid, expires, sig, state.clock())
        else:
            claims = await authenticated(request, state)
            if claims.role is not Role.ADMIN and not await state.db.run(
                state.db.sync.is_pinned_by, claims.wallet, cid
            ):
                raise NotFound("no such blob for this wallet")
        size = await state.db.run(state.db.sync.blob_size, cid)
        if size is None:
            raise NotFound("no such blob")
        return _stream_blob(state, cid, size)

    @router.post("/blobs/{cid}/link", response_model=LinkOut)
    async def make_link(cid: str, body: LinkIn, claims: Claims, state: State) -> LinkOut:
        """A download URL for ``cid`` that works without a token until it expires."""
        validate_cid(cid)
        if body.ttl_s > state.config.max_link_ttl_s:
            raise BadRequest(f"ttl_s is limited to {state.config.max_link_ttl_s}", code="bad_ttl")
        if not await state.db.run(state.db.sync.is_pinned_by, claims.wallet, cid):
            raise NotFound("no such blob for this wallet")
        expires_at = int(state.clock()) + body.ttl_s
        signature = state.links.sign(cid, expires_at)
        return LinkOut(
            url=f"/api/v1/blobs/{cid}?expires={expires_at}&sig={signature}", expires_at=expires_at
        )

    @router.post("/pins/{cid}", response_model=PinOut, status_code=201)
    async def pin(cid: str, claims: Claims, state: State) -> PinOut:
        """Pin a blob this node already stores (uploaded by anyone); counts against the quota."""
        validate_cid(cid)
        async with state.cid_locks.hold(cid):
            try:
                size = await state.db.run(
                    state.db.sync.pin, claims.wallet, cid, size=None, now=state.clock(),
                    quota=state.config.quota_bytes,
                )
            except KeyError:
                raise NotFound("no such blob; upload it instead") from None
        return PinOut(cid=cid, size=size, pinned_at=state.clock())

    @router.delete("/pins/{cid}", status_code=204)
    async def unpin(cid: str, claims: Claims, state: State) -> Response:
        validate_cid(cid)
        if not await state.db.run(state.db.sync.unpin, claims.wallet, cid):
            raise NotFound("this wallet has no pin on that cid")
        await _release(state, cid)
        return Response(status_code=204)

    @router.get("/pins", response_model=PinsOut)
    async def list_pins(
        claims: Claims,
        state: State,
        after: Annotated[str, Query(max_length=80)] = "",
        limit: Annotated[int, Query(gt=0, le=_MAX_LIST)] = 100,
    ) -> PinsOut:
        rows = await state.db.run(state.db.sync.list_pins, claims.wallet, limit, after)
        usage = await state.db.run(state.db.sync.usage, claims.wallet)
        return PinsOut(
            pins=[PinOut(cid=r.cid, size=r.size, pinned_at=r.pinned_at) for r in rows],
            usage_bytes=usage,
            quota_bytes=state.config.quota_bytes,
        )

    return router


def _storage_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/storage", tags=["storage"])

    @router.put(
        "/{bucket}/{key:path}", response_model=ObjectOut,
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}},
    )
    async def put_object(
        bucket: str, key: str, request: Request, claims: Claims, state: State
    ) -> ObjectOut:
        validate_bucket(bucket)
        validate_key(key)
        replaced: list[str] = []
        now = state.clock()

        async def commit(staged: Staged) -> None:
            stored = await _store_if_new(state, staged)
            try:
                old = await state.db.run(
                    state.db.sync.put_object, claims.wallet, bucket, key,
                    cid=staged.cid, size=staged.size, now=now, quota=state.config.quota_bytes,
                )
            except QuotaExceeded:
                if stored:
                    await state.store.delete(staged.cid)
                raise
            if old is not None:
                replaced.append(old)

        try:
            staged = await _ingest(state, request, claims.wallet, None, commit)
        except ApiError as exc:
            state.metrics.uploads.labels(exc.code).inc()
            raise
        state.metrics.uploads.labels("ok").inc()
        state.metrics.upload_bytes.inc(staged.size)
        for old in replaced:
            await _release(state, old)
        return ObjectOut(bucket=bucket, key=key, cid=staged.cid, size=staged.size, updated_at=now)

    @router.get("/{bucket}/{key:path}", response_class=StreamingResponse)
    async def get_object(
        bucket: str, key: str, claims: Claims, state: State
    ) -> StreamingResponse:
        validate_bucket(bucket)
        validate_key(key)
        row = await state.db.run(state.db.sync.get_object, claims.wallet, bucket, key)
        if row is None:
            raise NotFound("no such key")
        return _stream_blob(state, row.cid, row.size)

    @router.delete("/{bucket}/{key:path}", status_code=204)
    async def delete_object(bucket: str, key: str, claims: Claims, state: State) -> Response:
        validate_bucket(bucket)
        validate_key(key)
        cid = await state.db.run(state.db.sync.delete_object, claims.wallet, bucket, key)
        if cid is None:
            raise NotFound("no such key")
        await _release(state, cid)
        return Response(status_code=204)

    @router.get("/{bucket}", response_model=ObjectsOut)
    async def list_objects(
        bucket: str,
        claims: Claims,
        state: State,
        *,
        prefix: Annotated[str, Query(max_length=1024)] = "",
        after: Annotated[str, Query(max_length=1024)] = "",
        limit: Annotated[int, Query(gt=0, le=_MAX_LIST)] = 100,
    ) -> ObjectsOut:
        validate_bucket(bucket)
        rows = await state.db.run(
            state.db.sync.list_objects, claims.wallet, bucket,
            prefix=prefix, limit=limit, after=after,
        )
        return ObjectsOut(
            objects=[
                ObjectOut(bucket=r.bucket, key=r.key, cid=r.cid, size=r.size,
                          updated_at=r.updated_at)
                for r in rows
            ]
        )

    return router


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
    for router in (_auth_router(), _admin_router(), _blob_router(), _storage_router()):
        app.include_router(router, dependencies=limited)
    for router in extra_routers:
        app.include_router(router, dependencies=limited)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    _install_error_handlers(app, metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_JSON_BODY,
                       exempt_prefixes=_STREAMING_PREFIXES)
    app.add_middleware(RouteTimingMiddleware, observe=metrics.observe_request)
    return app
