"""The node's local HTTP API: FastAPI over the node's services, served on 127.0.0.1.

Theory of operation: ``serve_node_api(runtime, settings)`` fetches the bootstrap node's JWKS
once (tokens are then verified offline), builds the services (``dgpu.node.services.api``), starts
the job manager in its nursery and serves ``create_node_api(ctx)`` with ``serve_http`` (uvicorn
under trio-asyncio, in the node's own process and thread).

Route handlers run as asyncio tasks. Anything that touches trio objects (the job manager's
nursery, events, the ledger client's trio HTTP pool) is called through ``trio_as_aio``; the
offer book is plain data and is read directly. The proxies to the bootstrap node (auth, storage)
stay on the asyncio side with their own httpx client, opened and closed by the app's lifespan.

Authentication: every ``/api/v1`` route except ``/api/v1/auth/*`` needs ``Authorization: Bearer
<JWT>`` issued by the bootstrap node, verified with its JWKS (signature, issuer, audience, time),
whose subject is this node's wallet or whose role is ``admin`` (or a configured admin wallet).
``/metrics``, ``/healthz`` and the OpenAPI documents are open: the server listens on localhost.

Errors are ``{"error": {"code", "message"}}``; library exceptions (httpx, the bootstrap's and the
ledger's errors) are converted here, once. Tokens, keys and signatures never reach logs or error
messages (the access log is off; validation errors carry locations and messages, not inputs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import httpx
import trio
import trio_asyncio
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from dgpu.bootstrap import errors as boot_errors
from dgpu.bootstrap.auth import DOMAINS, AccessClaims, Role, TokenVerifier
from dgpu.bootstrap.http_app import BodyLimitMiddleware, ChallengeIn, RefreshIn, SignedIn
from dgpu.bootstrap.storage import validate_bucket, validate_key
from dgpu.node.adapters.http_server import HttpServerError, RouteTimingMiddleware, serve_http
from dgpu.node.metrics import NodeMetrics
from dgpu.node.services import api as svc
from dgpu.node.services.offers import OfferBook
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["ApiContext", "create_node_api", "fetch_verifier", "serve_node_api"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the bootstrap's answers to auth calls are small JSON documents
_MAX_UPSTREAM_JSON = 64 * 1024
#: timeout of one call to the bootstrap node (auth, JWKS); storage streams use read timeouts
_UPSTREAM_TIMEOUT_S = 15.0
_STREAMING_PREFIXES = ("/api/v1/storage/",)

_STATUS = {
    svc.NotFound: 404, svc.Conflict: 409, svc.Busy: 429, svc.Forbidden: 403,
    svc.Unavailable: 503, svc.NotImplementedOnLedger: 501, svc.JobRunError: 422,
}
_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _in_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run a trio coroutine function from a route handler (an asyncio task)."""
    result: T = await trio_asyncio.trio_as_aio(fn)(*args)
    return result


# -- context -------------------------------------------------------------------------------------


class BootstrapSession:
    """The node's own login at the bootstrap node (for storage): signs challenges with the node
    key, caches the access token until shortly before it expires. Asyncio side only."""

    def __init__(self, key: SigningKey, clock: Callable[[], float]) -> None:
        self.key = key
        self.clock = clock
        self._token: str | None = None
        self._expires_at = 0

    async def token(self, http: httpx.AsyncClient) -> str:
        if self._token is not None and self.clock() < self._expires_at - 60:
            return self._token
        wallet = self.key.public_key.wallet
        challenge = await _upstream_json(http, "POST", "/api/v1/auth/challenge",
                                         {"wallet": wallet, "action": "login"})
        to_sign = _checked_challenge(challenge, wallet)
        signature = self.key.sign(to_sign)
        from dgpu.protocol.keys import b58encode

        pair = await _upstream_json(http, "POST", "/api/v1/auth/login",
                                    {"wallet": wallet, "nonce": challenge["nonce"],
                                     "signature": b58encode(signature)})
        self._token, self._expires_at = str(pair["access_token"]), int(pair["expires_at"])
        return self._token


def _checked_challenge(challenge: dict[str, Any], wallet: str) -> bytes:
    """The bytes to sign, after checking they are a login challenge for ``wallet`` (a node never
    signs whatever a server hands it)."""
    try:
        message = json.loads(str(challenge["message"]))
        to_sign = bytes.fromhex(str(challenge["signing_bytes_hex"]))
    except (KeyError, ValueError) as exc:
        raise svc.Unavailable("the bootstrap node sent a malformed challenge", "upstream_invalid") from exc
    if (message.get("wallet") != wallet or message.get("action") != "login"
            or to_sign != DOMAINS["login"] + str(challenge["message"]).encode("ascii")):
        raise svc.Unavailable("the bootstrap node sent a challenge for something else", "upstream_invalid")
    return to_sign


class UpstreamError(Exception):
    """The bootstrap node answered an error: passed through with its status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def _upstream_json(http: httpx.AsyncClient, method: str, path: str,
                         body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        response = await http.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise svc.Unavailable(f"the bootstrap node is unreachable ({type(exc).__name__})",
                              "upstream_unavailable") from exc
    return _decode_upstream(response.status_code, response.content)


def _decode_upstream(status: int, content: bytes) -> dict[str, Any]:
    if len(content) > _MAX_UPSTREAM_JSON:
        raise svc.Unavailable("the bootstrap node's answer is too large", "upstream_invalid")
    try:
        body = json.loads(content) if content else {}
    except ValueError:
        raise svc.Unavailable(f"the bootstrap node answered {status} without JSON", "upstream_invalid") from None
    if not isinstance(body, dict):
        raise svc.Unavailable("the bootstrap node's answer is not a JSON object", "upstream_invalid")
    if status >= 400:
        raw = body.get("error")
        err: dict[str, Any] = raw if isinstance(raw, dict) else {}
        raise UpstreamError(status, str(err.get("code", f"http_{status}"))[:64],
                            str(err.get("message", "the bootstrap node refused"))[:500])
    return body


@dataclass
class ApiContext:
    """Everything the routes use; built by ``serve_node_api`` (tests build their own)."""

    settings: svc.ApiSettings
    owner: str
    key: SigningKey
    book: OfferBook
    verifier: TokenVerifier
    jobs: svc.JobManager
    wallet: svc.WalletService
    metrics: NodeMetrics
    providers: svc.ProviderControl | None = None
    clock: Callable[[], float] = time.time
    #: refreshes gauges that are read at scrape time (peers, offer book size)
    on_scrape: Callable[[], None] | None = None
    session: BootstrapSession = field(init=False)
    http: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self.session = BootstrapSession(self.key, self.clock)

    def upstream(self) -> httpx.AsyncClient:
        if self.http is None:
            raise svc.Unavailable("the API is not started", "not_ready")
        return self.http

    def now(self) -> int:
        return int(self.clock())


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(_ctx)]


async def _authorized(request: Request, ctx: Ctx) -> AccessClaims:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise boot_errors.Unauthorized("send Authorization: Bearer <token> (dgpu login)", code="no_token")
    claims = ctx.verifier.verify(token.strip(), ctx.clock())
    if claims.wallet != ctx.owner and claims.role is not Role.ADMIN and (
            claims.wallet not in ctx.settings.admin_wallets):
        raise boot_errors.Forbidden("this node serves its owner's wallet and admins only", code="not_owner")
    return claims


Claims = Annotated[AccessClaims, Depends(_authorized)]
Protected = [Depends(_authorized)]


# -- request / response models -------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Out):
    code: str
    message: str


class ErrorOut(_Out):
    error: ErrorBody


class GpuOut(_Out):
    model: str
    vram_mib: int
    count: int
    compute_capability: str | None = None
    simulated: bool


class OfferOut(_Out):
    provider: str
    peer_id: str | None
    region: str
    ledger: str
    mint: str
    gpus: list[GpuOut]
    gpu_count: int
    max_vram_mib: int
    price_per_gpu_minute: int
    executors: list[str]
    simulated: bool
    min_minutes: int
    max_minutes: int
    seq: int
    expires_at: int
    own: bool = False
    paused: bool = False


class MarketOut(_Out):
    total: int
    offset: int
    limit: int
    offers: list[OfferOut]


class ProvidersOut(_Out):
    providers: list[OfferOut]


class LogLine(_Out):
    seq: int
    stream: str
    line: str


class JobOut(_Out):
    id: str
    state: svc.ApiJobState
    created_at: int
    finished_at: int | None
    provider: str | None
    agreement_id: str | None
    escrow: str | None
    rate_per_minute: int | None
    exit_code: int | None
    reason: str
    error_code: str | None
    minutes: int
    spent: int
    paid: int
    fee: int
    refunded: int
    executor: str
    max_minutes: int
    cancel_requested: bool
    next_log_seq: int
    last_logs: list[LogLine]

    @classmethod
    def of(cls, job: svc.ApiJob, tail: int = 20) -> JobOut:
        return cls(
            id=job.id, state=job.state, created_at=job.created_at, finished_at=job.finished_at,
            provider=job.provider, agreement_id=job.agreement_id, escrow=job.escrow,
            rate_per_minute=job.rate_per_minute, exit_code=job.exit_code, reason=job.reason,
            error_code=job.error_code, minutes=job.minutes, spent=job.spent, paid=job.paid, fee=job.fee,
            refunded=job.refunded, executor=str(job.spec.executor), max_minutes=job.spec.max_minutes,
            cancel_requested=job.cancel_requested.is_set(), next_log_seq=job.next_seq,
            last_logs=[LogLine(seq=s, stream=st, line=ln) for s, st, ln in job.tail(None, tail)],
        )


class JobsOut(_Out):
    total: int
    jobs: list[JobOut]


class LogsOut(_Out):
    id: str
    state: svc.ApiJobState
    next_seq: int
    #: the oldest seq still held (older lines were dropped from the bounded buffer)
    first_seq: int
    lines: list[LogLine]


class WalletOut(_Out):
    address: str
    ledger: str
    mint: str
    decimals: int
    balance: int
    balance_display: str
    real_value: bool


class BalanceOut(_Out):
    address: str
    balance: int
    decimals: int
    balance_display: str
    real_value: bool


class DepositIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: development ledger: how much the faucet mints (base units); ignored on a real ledger
    amount: int = Field(0, ge=0, le=10**15)


class DepositOut(_Out):
    address: str
    credited: int
    real_value: bool
    balance: int | None = None
    deposit_address: str | None = None
    note: str


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str = Field(min_length=32, max_length=44)
    amount: int = Field(gt=0, le=10**15)


class EstimateOut(_Out):
    gpu_model: str
    gpu_count: int
    minutes: int
    hourly_price_per_gpu: str
    decimals: int
    rate_per_gpu_minute: int
    rate_per_minute: int
    total: int
    fee: int
    provider_net: int
    fee_bps: int


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["active", "paused"]


class StatusOut(_Out):
    provider: str
    status: Literal["active", "paused"]


class ObjectOut(_Out):
    bucket: str
    key: str
    cid: str
    size: int
    updated_at: float


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, forged or expired token"},
    403: {"model": ErrorOut, "description": "not this node's owner or an admin"},
    413: {"model": ErrorOut, "description": "request body too large"},
    422: {"model": ErrorOut, "description": "invalid request"},
}
#: the bootstrap node's refusals, passed through by the auth proxy with their status and code
_UPSTREAM: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": "the bootstrap node's answer, passed through"}
    for status in (400, 401, 403, 413, 422, 429, 502, 503)
}


# -- routers -------------------------------------------------------------------------------------


def _auth_router() -> APIRouter:
    """Proxied to the bootstrap node: the caller signs; the node only passes messages on."""
    router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=_UPSTREAM)

    async def forward(ctx: ApiContext, path: str, body: BaseModel) -> JSONResponse:
        data = await _upstream_json(ctx.upstream(), "POST", path, body.model_dump(mode="json"))
        return JSONResponse(data)

    @router.post("/challenge")
    async def challenge(body: ChallengeIn, ctx: Ctx) -> JSONResponse:
        """A login/register challenge from the bootstrap node: sign ``signing_bytes_hex``."""
        return await forward(ctx, "/api/v1/auth/challenge", body)

    @router.post("/login")
    async def login(body: SignedIn, ctx: Ctx) -> JSONResponse:
        """Exchange the signed challenge for the bootstrap's access and refresh tokens."""
        return await forward(ctx, "/api/v1/auth/login", body)

    @router.post("/register")
    async def register(body: SignedIn, ctx: Ctx) -> JSONResponse:
        return await forward(ctx, "/api/v1/auth/register", body)

    @router.post("/refresh")
    async def refresh(body: RefreshIn, ctx: Ctx) -> JSONResponse:
        return await forward(ctx, "/api/v1/auth/refresh", body)

    return router


def _jobs_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], dependencies=Protected, responses=_ERRORS)

    @router.post("", status_code=202, response_model=JobOut,
                 responses={429: {"model": ErrorOut, "description": "too many running API jobs"},
                            503: {"model": ErrorOut, "description": "no ledger configured (no_ledger): "
                                  "jobs cannot be paid for"}})
    async def submit(spec: svc.JobSpec, ctx: Ctx, response: Response) -> JobOut:
        """Submit a job: it is negotiated, funded on the ledger (escrow) and run in the background;
        poll its status. A node without a ledger refuses (503 ``no_ledger``)."""
        async def go() -> svc.ApiJob:
            return ctx.jobs.submit(spec)

        job = await _in_trio(go)
        response.headers["location"] = f"/api/v1/jobs/{job.id}"
        return JobOut.of(job)

    @router.get("", response_model=JobsOut)
    async def list_jobs(ctx: Ctx, state: svc.ApiJobState | None = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50,
                        offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> JobsOut:
        total, jobs = ctx.jobs.list_jobs(state=state, limit=limit, offset=offset)
        return JobsOut(total=total, jobs=[JobOut.of(j, tail=0) for j in jobs])

    @router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
    async def status(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx) -> JobOut:
        return JobOut.of(ctx.jobs.get(job_id))

    @router.get("/{job_id}/logs", response_model=LogsOut, responses={404: {"model": ErrorOut}})
    async def logs(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx,
                   since: Annotated[int | None, Query(ge=0)] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> LogsOut:
        """The last ``limit`` lines, or up to ``limit`` lines from ``since`` on."""
        job = ctx.jobs.get(job_id)
        lines = job.tail(since, limit)
        first = job.logs[0][0] if job.logs else job.next_seq
        return LogsOut(id=job.id, state=job.state, next_seq=job.next_seq, first_seq=first,
                       lines=[LogLine(seq=s, stream=st, line=ln) for s, st, ln in lines])

    @router.get("/{job_id}/result", response_class=FileResponse,
                responses={200: {"content": {"application/x-tar": {}}}, 404: {"model": ErrorOut},
                           409: {"model": ErrorOut}})
    async def result(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx) -> FileResponse:
        """The job's output folder as a tar (verified against the provider's content id), streamed."""
        job = ctx.jobs.get(job_id)
        if job.result_file is None or not job.result_file.is_file():
            raise svc.Conflict(f"job {job.id} has no result (it did not finish, or kept no outputs)",
                               "no_result")
        return FileResponse(job.result_file, media_type="application/x-tar", filename=f"{job.id}.tar")

    @router.delete("/{job_id}", status_code=202, response_model=JobOut,
                   responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}})
    async def cancel(job_id: Annotated[str, Field(max_length=64)], ctx: Ctx) -> JobOut:
        """Cancel: the provider stops the job and the escrow is settled (unused minutes back)."""
        async def go() -> svc.ApiJob:
            return ctx.jobs.cancel(job_id)

        return JobOut.of(await _in_trio(go))

    return router


def _billing_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/billing", tags=["billing"], dependencies=Protected,
                       responses=_ERRORS)
    ledger_errors: dict[int | str, dict[str, Any]] = {
        409: {"model": ErrorOut}, 501: {"model": ErrorOut}, 503: {"model": ErrorOut}}

    @router.get("/wallet", response_model=WalletOut, responses=ledger_errors)
    async def wallet(ctx: Ctx) -> WalletOut:
        """The node's wallet: address, token balance, mint and decimals (from the ledger)."""
        return WalletOut(**await _in_trio(ctx.wallet.info))

    @router.get("/wallet/{wallet_id}/balance", response_model=BalanceOut, responses=ledger_errors)
    async def balance(wallet_id: Annotated[str, Field(min_length=32, max_length=44,
                                                      pattern=r"^[1-9A-HJ-NP-Za-km-z]+$")],
                      ctx: Ctx) -> BalanceOut:
        return BalanceOut(**await _in_trio(ctx.wallet.balance, wallet_id))

    @router.post("/wallet/{wallet_id}/deposit", response_model=DepositOut, responses=ledger_errors)
    async def deposit(wallet_id: Annotated[str, Field(max_length=44)], body: DepositIn, ctx: Ctx) -> DepositOut:
        """Development ledger: the faucet mints ``amount`` (worth nothing, ``real_value`` false).
        A real ledger: the deposit address; nothing is ever credited on a client's word."""
        return DepositOut(**await _in_trio(ctx.wallet.deposit, wallet_id, body.amount))

    @router.post("/wallet/{wallet_id}/withdraw", responses=ledger_errors)
    async def withdraw(wallet_id: Annotated[str, Field(max_length=44)], body: WithdrawIn,
                       ctx: Ctx) -> dict[str, Any]:
        """A signed transfer from the node's wallet (501 on a ledger client without transfers)."""
        return await _in_trio(ctx.wallet.withdraw, wallet_id, body.to, body.amount)

    @router.get("/marketplace", response_model=MarketOut)
    async def marketplace(  # noqa: PLR0917 (FastAPI query parameters)
        ctx: Ctx,
        gpu_model: Annotated[str | None, Query(max_length=64)] = None,
        min_vram_mib: Annotated[int, Query(ge=0, le=2**24)] = 0,
        gpu_count: Annotated[int, Query(ge=1, le=64)] = 1,
        region: Annotated[str | None, Query(max_length=64)] = None,
        max_price: Annotated[int | None, Query(gt=0, le=10**15, description="per GPU-minute")] = None,
        executor: Executor | None = None,
        include_simulated: bool = False,
        sort: Literal["price", "-price", "vram", "-vram"] = "price",
        limit: Annotated[int, Query(ge=1, le=svc.MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    ) -> MarketOut:
        """The offer book, filtered, sorted and paginated (prices per GPU-minute, base units)."""
        q = svc.MarketQuery(gpu_model=gpu_model, min_vram_mib=min_vram_mib, gpu_count=gpu_count,
                            region=region, max_price=max_price, executor=executor,
                            include_simulated=include_simulated, sort=sort, limit=limit, offset=offset)
        total, page = svc.market_page(ctx.book, q, now=ctx.now())
        return MarketOut(total=total, offset=offset, limit=limit,
                         offers=[OfferOut(**row) for row in svc.provider_rows(page)])

    @router.post("/pricing/estimate", response_model=EstimateOut)
    async def pricing_estimate(body: svc.EstimateIn, ctx: Ctx) -> EstimateOut:
        """The pricing engine: hourly price per GPU (dGPU, decimal string) and integer amounts."""
        decimals = 6
        if ctx.wallet.ledger is not None:
            with contextlib.suppress(svc.ApiError):
                decimals = int((await _in_trio(ctx.wallet.info))["decimals"])
        return EstimateOut(**svc.price_estimate(body, decimals=decimals))

    return router


def _providers_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/providers", tags=["providers"], dependencies=Protected,
                       responses=_ERRORS)

    def own_row(ctx: ApiContext) -> OfferOut:
        control = _control(ctx)
        row = svc.offer_row(control.current(), None)
        return OfferOut(**row, own=True, paused=control.paused)

    @router.get("", response_model=ProvidersOut)
    async def providers(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=svc.MAX_PAGE)] = 100,
                        offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> ProvidersOut:
        """Providers known from the offer book (and this node, when it is one)."""
        q = svc.MarketQuery(include_simulated=True, limit=limit, offset=offset)
        _, page = svc.market_page(ctx.book, q, now=ctx.now())
        rows = [OfferOut(**r) for r in svc.provider_rows(page) if r["provider"] != ctx.owner]
        if ctx.providers is not None and offset == 0:
            rows.insert(0, own_row(ctx))
        return ProvidersOut(providers=rows)

    @router.post("", response_model=OfferOut,
                 responses={409: {"model": ErrorOut, "description": "this node is not a provider"}})
    async def register(profile: svc.ProviderProfile, ctx: Ctx) -> OfferOut:
        """Update this node's provider profile (price, region, simulated GPUs on development
        networks, executors) and republish its offer."""
        control = _control(ctx)
        offer = control.update(profile)
        return OfferOut(**svc.offer_row(offer, None), own=True, paused=control.paused)

    @router.put("/{provider_id}/status", response_model=StatusOut,
                responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}})
    async def set_status(provider_id: Annotated[str, Field(max_length=44)], body: StatusIn,
                         ctx: Ctx) -> StatusOut:
        """Pause (stop publishing, refuse new requests) or resume offering."""
        control = _control(ctx)
        if provider_id != ctx.owner:
            raise svc.NotFound("only this node's own provider status can be changed here")

        async def go() -> None:
            control.set_paused(body.status == "paused")

        await _in_trio(go)
        return StatusOut(provider=ctx.owner, status=body.status)

    return router


def _control(ctx: ApiContext) -> svc.ProviderControl:
    if ctx.providers is None:
        raise svc.Conflict("this node is not a provider (start it with --role provider and GPUs)",
                           "not_a_provider")
    return ctx.providers


def _storage_router() -> APIRouter:
    """Streamed through to the bootstrap node's pinning API with the node's own token."""
    router = APIRouter(prefix="/api/v1/storage", tags=["storage"], dependencies=Protected,
                       responses={**_ERRORS, **_UPSTREAM, 404: {"model": ErrorOut}})

    def target(bucket: str, key: str) -> str:
        validate_bucket(bucket)
        validate_key(key)
        return f"/api/v1/storage/{bucket}/{urllib.parse.quote(key, safe='/')}"

    async def auth_headers(ctx: ApiContext) -> dict[str, str]:
        return {"authorization": "Bearer " + await ctx.session.token(ctx.upstream())}

    @router.put("/{bucket}/{key:path}", response_model=ObjectOut,
                openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}})
    async def put_object(bucket: str, key: str, request: Request, ctx: Ctx) -> ObjectOut:
        path = target(bucket, key)
        limit = ctx.settings.max_upload_bytes

        async def body() -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > limit:
                    raise boot_errors.PayloadTooLarge(f"uploads through the node are limited to {limit} bytes")
                yield chunk

        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise boot_errors.PayloadTooLarge(f"uploads through the node are limited to {limit} bytes")
        headers = await auth_headers(ctx)
        try:
            response = await ctx.upstream().put(path, content=body(), headers=headers)
        except httpx.HTTPError as exc:
            raise svc.Unavailable(f"the bootstrap node is unreachable ({type(exc).__name__})",
                                  "upstream_unavailable") from exc
        return ObjectOut(**_decode_upstream(response.status_code, response.content))

    @router.get("/{bucket}/{key:path}", response_class=StreamingResponse,
                responses={200: {"content": {"application/octet-stream": {}}}})
    async def get_object(bucket: str, key: str, ctx: Ctx) -> StreamingResponse:
        path = target(bucket, key)
        http = ctx.upstream()
        request = http.build_request("GET", path, headers=await auth_headers(ctx))
        try:
            response = await http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise svc.Unavailable(f"the bootstrap node is unreachable ({type(exc).__name__})",
                                  "upstream_unavailable") from exc
        if response.status_code >= 400:
            content = await response.aread()
            await response.aclose()
            _decode_upstream(response.status_code, content)  # raises UpstreamError
        headers = {k: v for k, v in response.headers.items()
                   if k in ("content-length", "etag", "content-type")}
        return StreamingResponse(response.aiter_bytes(), status_code=response.status_code,
                                 headers=headers, media_type="application/octet-stream",
                                 background=BackgroundTask(response.aclose))

    @router.delete("/{bucket}/{key:path}", status_code=204)
    async def delete_object(bucket: str, key: str, ctx: Ctx) -> Response:
        path = target(bucket, key)
        try:
            response = await ctx.upstream().delete(path, headers=await auth_headers(ctx))
        except httpx.HTTPError as exc:
            raise svc.Unavailable(f"the bootstrap node is unreachable ({type(exc).__name__})",
                                  "upstream_unavailable") from exc
        if response.status_code >= 400:
            _decode_upstream(response.status_code, response.content)
        return Response(status_code=204)

    return router


# -- errors and middleware -----------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    async def on_service(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, svc.ApiError)
        return _error(_STATUS.get(type(exc), 400), exc.code, exc.message)

    async def on_bootstrap(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, boot_errors.ApiError)
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.message, headers)

    async def on_upstream(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UpstreamError)
        # the bootstrap's 5xx are its own failures: a gateway error here
        return _error(exc.status if exc.status < 500 else 502, exc.code, exc.message)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = [".".join(str(p) for p in err.get("loc", ())) + ": " + str(err.get("msg", "invalid"))
                 for err in exc.errors()[:10]]
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request")

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the one catch-all, at the outermost boundary: a generic 500, the type in the log
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return _error(500, "internal", "internal error")

    app.add_exception_handler(svc.ApiError, on_service)
    app.add_exception_handler(boot_errors.ApiError, on_bootstrap)
    app.add_exception_handler(UpstreamError, on_upstream)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


# -- the app -------------------------------------------------------------------------------------


def create_node_api(ctx: ApiContext) -> FastAPI:
    """The node's local API over ``ctx``. The lifespan opens the httpx client to the bootstrap."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # asyncio side: the proxies run in route handlers (asyncio tasks)
        ctx.http = httpx.AsyncClient(base_url=ctx.settings.bootstrap_url.rstrip("/"),
                                     timeout=httpx.Timeout(_UPSTREAM_TIMEOUT_S),
                                     # bounds the connections this node holds to its bootstrap
                                     limits=httpx.Limits(max_connections=32))
        try:
            yield
        finally:
            await ctx.http.aclose()
            ctx.http = None

    app = FastAPI(title="dGPU node local API", version="1", lifespan=lifespan,
                  description="The node's local API: auth (via the bootstrap node), jobs, billing, "
                              "marketplace, providers, storage, metrics. Amounts are integers of the "
                              "mint's base unit.")
    app.state.ctx = ctx
    for router in (_auth_router(), _jobs_router(), _billing_router(), _providers_router(),
                   _storage_router()):
        app.include_router(router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if ctx.on_scrape is not None:
            ctx.on_scrape()
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    _install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=ctx.settings.max_body_bytes,
                       exempt_prefixes=_STREAMING_PREFIXES)
    def observe(method: str, template: str, status: int, seconds: float) -> None:
        ctx.metrics.http_latency.labels(template, method, str(status)).observe(seconds)

    app.add_middleware(RouteTimingMiddleware, observe=observe)
    return app


async def fetch_verifier(bootstrap_url: str, *, leeway_s: int = 30,
                         client: httpx.AsyncClient | None = None) -> TokenVerifier:
    """Fetch the bootstrap node's JWKS (with its issuer and audience) once; raises
    HttpServerError when it cannot be had (the API would not be able to check any token)."""
    url = bootstrap_url.rstrip("/") + "/api/v1/auth/jwks"
    async with contextlib.AsyncExitStack() as stack:
        http: httpx.AsyncClient = client if client is not None else await stack.enter_async_context(
            httpx.AsyncClient(timeout=_UPSTREAM_TIMEOUT_S))
        try:
            response = await http.get(url)
            doc = response.json()
            if response.status_code != 200 or not isinstance(doc, dict):
                raise ValueError(f"status {response.status_code}")
            return TokenVerifier.from_jwks(doc, str(doc["issuer"]), str(doc["audience"]), leeway_s)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise HttpServerError(f"cannot read the bootstrap node's JWKS at {url}: "
                                  f"{type(exc).__name__}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def serve_node_api(runtime: Any, settings: svc.ApiSettings, *,
                         ledger: Any | None = None, backend: svc.JobBackend | None = None,
                         metrics: NodeMetrics | None = None,
                         task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the local API for ``runtime`` (a ``NodeRuntime``) until cancelled; reports the port.

    ``ledger`` defaults to the development ledger at ``settings.ledger_url`` (acting as the node's
    key) when that is set; ``backend`` defaults to ``NetworkJobBackend`` over that ledger (tests
    pass a double). With neither a ledger nor a backend, job submissions are refused (503 no_ledger).
    Raises HttpServerError when the JWKS cannot be fetched or the port cannot be bound."""
    from dgpu.node.app import ProviderNode, wall_clock

    own_ledger = None
    if ledger is None and settings.ledger_url is not None:
        from dgpu.contracts.devledger.client import DevLedgerEscrow

        ledger = own_ledger = DevLedgerEscrow(settings.ledger_url, runtime.key)
    metrics = metrics or runtime.metrics
    verifier = await fetch_verifier(settings.bootstrap_url, leeway_s=settings.token_leeway_s)
    if backend is None and ledger is not None:  # no ledger: nothing can be paid, jobs are refused
        backend = svc.NetworkJobBackend(runtime, ledger, progress_interval_s=settings.progress_interval_s,
                                        clock=wall_clock)
    jobs = svc.JobManager(
        backend,
        max_active=settings.max_active_jobs, max_records=settings.max_job_records,
        log_lines=settings.log_lines, clock=wall_clock)
    offering = runtime.offering if isinstance(runtime, ProviderNode) else None
    providers = svc.ProviderControl(offering.publisher, development=settings.development) if offering else None

    ctx = ApiContext(settings=settings, owner=runtime.key.public_key.wallet, key=runtime.key,
                     book=runtime.book, verifier=verifier, jobs=jobs,
                     wallet=svc.WalletService(ledger, runtime.key.public_key.wallet),
                     metrics=metrics, providers=providers)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(jobs.run)
            port = await nursery.start(partial(serve_http, create_node_api(ctx), settings.host, settings.port))
            log.info("local API on http://%s:%d (owner %s)", settings.host, port, ctx.owner)
            task_status.started(port)
    finally:
        if own_ledger is not None:
            with trio.CancelScope(shield=True):
                await own_ledger.aclose()
