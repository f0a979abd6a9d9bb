"""What every route of the local API uses: the context, authentication, error documentation."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import httpx
import trio_asyncio
from fastapi import Depends
from starlette.requests import HTTPConnection

from dgpu.node.adapters import http_server as http_errors
from dgpu.node.adapters.bootstrap_client import BootstrapSession
from dgpu.node.adapters.http_api.revocations import RevocationCache
from dgpu.node.adapters.tokens import TokenVerifier
from dgpu.node.metrics import NodeMetrics
from dgpu.node.services import api as svc
from dgpu.node.services.api.schema import ErrorOut
from dgpu.node.services.offers import OfferBook
from dgpu.protocol.auth import AccessClaims
from dgpu.protocol.keys import SigningKey

__all__ = ["ERRORS", "UPSTREAM", "ApiContext", "Ctx", "Protected", "control", "in_trio"]

T = TypeVar("T")


async def in_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run a trio coroutine function from a route handler (an asyncio task)."""
    result: T = await trio_asyncio.trio_as_aio(fn)(*args)
    return result


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
    revocations: RevocationCache = field(init=False)
    http: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self.session = BootstrapSession(self.key, self.clock)
        self.revocations = RevocationCache(self.settings.revocation_check_s, self.clock)

    def upstream(self) -> httpx.AsyncClient:
        if self.http is None:
            raise svc.Unavailable("the API is not started", "not_ready")
        return self.http

    def now(self) -> int:
        return int(self.clock())


def _ctx(request: HTTPConnection) -> ApiContext:  # a request or a WebSocket
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(_ctx)]


async def _authorized(request: HTTPConnection, ctx: Ctx) -> AccessClaims:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise http_errors.Unauthorized("send Authorization: Bearer <token> (dgpu login)", code="no_token")
    claims = ctx.verifier.verify(token.strip(), ctx.clock())
    # the role does not matter here: an admin of the network is not an owner of this node
    if claims.wallet != ctx.owner and claims.wallet not in ctx.settings.admin_wallets:
        raise http_errors.Forbidden("this node serves its owner's wallet only", code="not_owner")
    await ctx.revocations.check(claims.family_id, ctx.upstream())
    return claims


Protected = [Depends(_authorized)]


def control(ctx: ApiContext) -> svc.ProviderControl:
    """This node's provider control; Conflict when the node is not a provider."""
    if ctx.providers is None:
        raise svc.Conflict("this node is not a provider (start it with --role provider and GPUs)",
                           "not_a_provider")
    return ctx.providers


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, forged or expired token"},
    403: {"model": ErrorOut, "description": "not this node's owner"},
    413: {"model": ErrorOut, "description": "request body too large"},
    422: {"model": ErrorOut, "description": "invalid request"},
}
#: the bootstrap node's refusals, passed through by the auth proxy with their status and code
UPSTREAM: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": "the bootstrap node's answer, passed through"}
    for status in (400, 401, 403, 413, 422, 429, 502, 503)
}
