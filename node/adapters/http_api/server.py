"""The node's local HTTP API: FastAPI over the node's services, served on 127.0.0.1.

Theory of operation: ``serve_node_api(node, settings)`` fetches the bootstrap node's JWKS
once (tokens are then verified offline), builds the services (``dgpu.node.services.api``), starts
the job manager in its nursery and serves ``create_node_api(ctx)`` with ``serve_http`` (uvicorn
under trio-asyncio, in the node's own process and thread). One router module per resource:
``auth``, ``jobs``, ``billing`` (wallet, pricing), ``marketplace``, ``providers``, ``storage``;
``context`` holds what they share; the wire models are ``dgpu.node.services.api.schema``.

Route handlers run as asyncio tasks. Anything that touches trio objects (the job manager's
nursery, events, the ledger client's trio HTTP pool) is called through ``trio_as_aio``; the
offer book is plain data and is read directly. The proxies to the bootstrap node (auth, storage)
stay on the asyncio side with their own httpx client, opened and closed by the app's lifespan.

Authentication: every ``/api/v1`` route except ``/api/v1/auth/*`` needs ``Authorization: Bearer
<JWT>`` issued by the bootstrap node, verified with its JWKS (signature, issuer, audience, time),
whose subject is this node's wallet (or a wallet its owner configured), whatever its role, and
whose family the bootstrap has not revoked (asked at most every ``revocation_check_s``).
``/metrics``, ``/healthz`` and the OpenAPI documents are open: the server listens on localhost.

Errors are ``{"error": {"code", "message"}}``; library exceptions (httpx, the bootstrap's and the
ledger's errors) are converted here, once. Tokens, keys and signatures never reach logs or error
messages (the access log is off; validation errors carry locations and messages, not inputs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import trio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from dgpu._http import async_client
from dgpu.node.adapters import http_server as http_errors
from dgpu.node.adapters.bootstrap_client import UPSTREAM_TIMEOUT_S, UpstreamError, fetch_verifier
from dgpu.node.adapters.forward_tcp import listen_local
from dgpu.node.adapters.http_api.auth import auth_router
from dgpu.node.adapters.http_api.billing import billing_router
from dgpu.node.adapters.http_api.context import ApiContext
from dgpu.node.adapters.http_api.hosts import HostGuardMiddleware
from dgpu.node.adapters.http_api.jobs import jobs_router
from dgpu.node.adapters.http_api.marketplace import marketplace_router
from dgpu.node.adapters.http_api.providers import providers_router
from dgpu.node.adapters.http_api.shell import shell_router
from dgpu.node.adapters.http_api.storage import STREAMING_PREFIXES, links_router, storage_router
from dgpu.node.adapters.http_server import BodyLimitMiddleware, RouteTimingMiddleware, serve_http
from dgpu.node.metrics import NodeMetrics
from dgpu.node.ports.store import RentalBook
from dgpu.node.services import api as svc
from dgpu.node.services.blobs import BlobShelf
from dgpu.node.services.offers import OfferBook
from dgpu.node.services.renter import Renter
from dgpu.node.services.settlement import Settlements
from dgpu.protocol.keys import SigningKey

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

    from dgpu.contracts.escrow_api import EscrowLedger
    from dgpu.node.adapters.p2p import P2PNode
    from dgpu.node.services.publisher import OfferPublisher

__all__ = ["ApiNode", "create_node_api", "serve_node_api"]

log = logging.getLogger(__name__)

_STATUS = {
    svc.NotFound: 404, svc.Conflict: 409, svc.Busy: 429, svc.Forbidden: 403,
    svc.Unavailable: 503, svc.NotImplementedOnLedger: 501, svc.JobRunError: 422,
}
_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_service(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, svc.ApiError)
        return _error(_STATUS.get(type(exc), 400), exc.code, exc.message)

    async def on_bootstrap(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, http_errors.ApiError)
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
    app.add_exception_handler(http_errors.ApiError, on_bootstrap)
    app.add_exception_handler(UpstreamError, on_upstream)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def create_node_api(ctx: ApiContext) -> FastAPI:
    """The node's local API over ``ctx``. The lifespan opens the httpx client to the bootstrap."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # asyncio side: the proxies run in route handlers (asyncio tasks)
        ctx.http = async_client(base_url=ctx.settings.bootstrap_url.rstrip("/"),
                                timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S),
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
    for router in (auth_router(), jobs_router(), shell_router(), billing_router(), marketplace_router(),
                   providers_router(), storage_router(), links_router()):
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
                       exempt_prefixes=STREAMING_PREFIXES)

    def observe(method: str, template: str, status: int, seconds: float) -> None:
        ctx.metrics.http_latency.labels(template, method, str(status)).observe(seconds)

    app.add_middleware(RouteTimingMiddleware, observe=observe)
    # outermost: a rebound or cross-site request reaches nothing, not even /metrics or /docs
    listen = () if ctx.settings.host in ("0.0.0.0", "::") else (ctx.settings.host,)
    app.add_middleware(HostGuardMiddleware, allowed=(*ctx.settings.allowed_hosts, *listen))
    return app


@dataclass(frozen=True, slots=True)
class ApiNode:
    """What the local API serves from the node that hosts it (``node/app.py`` builds it)."""

    key: SigningKey
    #: the node's network (the renter workflow dials providers on it)
    network: P2PNode
    book: OfferBook
    #: the node's blob shelf (API job inputs go out from it)
    shelf: BlobShelf
    metrics: NodeMetrics
    #: API job results are kept under ``data_dir/api-results``
    data_dir: Path
    accept_simulated: bool
    #: wall seconds and fresh nonces for the signed protocol messages
    clock: Callable[[], int]
    nonce: Callable[[], bytes]
    #: the node's ledger client (chosen once by the app); None: nothing can be paid
    ledger: EscrowLedger | None = None
    publisher: OfferPublisher | None = None
    #: the node's pending settlements (durable, retried); None: each close is tried once
    settlements: Settlements | None = None
    #: where the renter keeps its rentals (API jobs re-attach after a restart); None: not kept
    rentals: RentalBook | None = None


async def serve_node_api(node: ApiNode, settings: svc.ApiSettings, *,
                         ledger: EscrowLedger | None = None, backend: svc.JobBackend | None = None,
                         task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the local API for ``node`` until cancelled; reports the port.

    ``ledger`` defaults to the development ledger at ``settings.ledger_url`` (acting as the node's
    key) when that is set; ``backend`` defaults to ``NetworkJobBackend`` over that ledger (tests
    pass a double). With neither a ledger nor a backend, job submissions are refused (503 no_ledger).
    Raises HttpServerError when the JWKS cannot be fetched or the port cannot be bound."""
    own_ledger = None
    ledger = ledger if ledger is not None else node.ledger
    if ledger is None and settings.ledger_url is not None:
        from dgpu.contracts.devledger.client import DevLedgerEscrow

        ledger = own_ledger = DevLedgerEscrow(settings.ledger_url, node.key)
    verifier = await fetch_verifier(settings.bootstrap_url, leeway_s=settings.token_leeway_s)
    if backend is None and ledger is not None:  # no ledger: nothing can be paid, jobs are refused
        renter = Renter(node.network, node.key, node.book, node.shelf, ledger,
                        accept_simulated=node.accept_simulated, clock=node.clock, nonce=node.nonce,
                        input_roots=settings.input_roots, rentals=node.rentals, listen=listen_local,
                        settlements=node.settlements if ledger is node.ledger else None)
        backend = svc.NetworkJobBackend(renter, results_dir=node.data_dir / "api-results",
                                        progress_interval_s=settings.progress_interval_s)
    jobs = svc.JobManager(
        backend,
        max_active=settings.max_active_jobs, max_records=settings.max_job_records,
        log_lines=settings.log_lines, clock=node.clock,
        reattacher=backend if isinstance(backend, svc.NetworkJobBackend) else None)
    providers = None
    if node.publisher is not None:
        providers = svc.ProviderControl(node.publisher, development=settings.development)
    wallet = node.key.public_key.wallet
    ctx = ApiContext(settings=settings, owner=wallet, key=node.key, book=node.book, verifier=verifier, jobs=jobs,
                     wallet=svc.WalletService(ledger, wallet), metrics=node.metrics, providers=providers)
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
