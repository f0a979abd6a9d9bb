"""``/api/v1/billing/marketplace``: the offer book, filtered, sorted and paginated."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from dgpu.node.adapters.http_api.context import ERRORS, Ctx, Protected
from dgpu.node.services import api as svc
from dgpu.node.services.api.schema import MarketOut
from dgpu.protocol.messages import Executor

__all__ = ["marketplace_router"]


def marketplace_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/billing", tags=["billing"], dependencies=Protected,
                       responses=ERRORS)

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
        return MarketOut(total=total, offset=offset, limit=limit, offers=svc.offer_rows(page),
                         hidden_simulated=svc.hidden_simulated(ctx.book, q, total, now=ctx.now()))

    return router
