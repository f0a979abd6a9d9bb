"""``/api/v1/providers``: providers known from the offer book; this node's own profile and status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from dgpu.node.adapters.http_api.context import ERRORS, ApiContext, Ctx, Protected, control, in_trio
from dgpu.node.services import api as svc
from dgpu.node.services.api.schema import ErrorOut, OfferOut, ProvidersOut, StatusIn, StatusOut

__all__ = ["providers_router"]


def _own_row(ctx: ApiContext) -> OfferOut:
    own = control(ctx)
    return OfferOut.of(own.current(), None, own=True, paused=own.paused)


def providers_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/providers", tags=["providers"], dependencies=Protected,
                       responses=ERRORS)

    @router.get("", response_model=ProvidersOut)
    async def providers(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=svc.MAX_PAGE)] = 100,
                        offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> ProvidersOut:
        """Providers known from the offer book (and this node, when it is one)."""
        q = svc.MarketQuery(include_simulated=True, limit=limit, offset=offset)
        _, page = svc.market_page(ctx.book, q, now=ctx.now())
        rows = [r for r in svc.offer_rows(page) if r.provider != ctx.owner]
        if ctx.providers is not None and offset == 0:
            rows.insert(0, _own_row(ctx))
        return ProvidersOut(providers=rows)

    @router.post("", response_model=OfferOut,
                 responses={409: {"model": ErrorOut, "description": "this node is not a provider"}})
    async def register(profile: svc.ProviderProfile, ctx: Ctx) -> OfferOut:
        """Update this node's provider profile (price, region, simulated GPUs on development
        networks, executors) and republish its offer."""
        own = control(ctx)
        offer = own.update(profile)
        return OfferOut.of(offer, None, own=True, paused=own.paused)

    @router.put("/{provider_id}/status", response_model=StatusOut,
                responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}})
    async def set_status(provider_id: Annotated[str, Field(max_length=44)], body: StatusIn,
                         ctx: Ctx) -> StatusOut:
        """Pause (stop publishing, refuse new requests) or resume offering."""
        own = control(ctx)
        if provider_id != ctx.owner:
            raise svc.NotFound("only this node's own provider status can be changed here")

        async def go() -> None:
            own.set_paused(body.status == "paused")

        await in_trio(go)
        return StatusOut(provider=ctx.owner, status=body.status)

    return router
