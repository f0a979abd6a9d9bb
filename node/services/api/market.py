"""The marketplace (the offer book, filtered and paged) and the pricing engine's estimates."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from dgpu.node.services.api.errors import ApiError
from dgpu.node.services.api.schema import EstimateIn, EstimateOut, OfferOut
from dgpu.node.services.offers import BookEntry, OfferBook, OfferQuery
from dgpu.protocol.errors import PricingError
from dgpu.protocol.messages import Executor
from dgpu.protocol.pricing import DEFAULT_FEE_BPS, PriceInputs, estimate, hourly_price, rate_per_minute

__all__ = ["MAX_PAGE", "MarketQuery", "hidden_simulated", "market_page", "offer_rows", "price_estimate"]

#: a page of the marketplace is at most this many offers (bounds the response size)
MAX_PAGE = 200


@dataclass(frozen=True, slots=True)
class MarketQuery:
    gpu_model: str | None = None
    min_vram_mib: int = 0
    gpu_count: int = 1
    region: str | None = None
    max_price: int | None = None
    executor: Executor | None = None
    include_simulated: bool = False
    sort: Literal["price", "-price", "vram", "-vram"] = "price"
    limit: int = 50
    offset: int = 0

    def offer_query(self) -> OfferQuery:
        return OfferQuery(gpu_model=self.gpu_model, min_vram_mib=self.min_vram_mib,
                          gpu_count=self.gpu_count, region=self.region,
                          max_price_per_minute=self.max_price, executor=self.executor,
                          include_simulated=self.include_simulated)


def market_page(book: OfferBook, q: MarketQuery, *, now: int) -> tuple[int, list[BookEntry]]:
    """(total matches, the requested page) — sorted by price (cheapest first) or VRAM."""
    hits = book.query(q.offer_query(), now=now, order=q.sort)
    return len(hits), hits[q.offset:q.offset + min(q.limit, MAX_PAGE)]


def hidden_simulated(book: OfferBook, q: MarketQuery, total: int, *, now: int) -> int:
    """How many more offers would match with simulated GPUs included (0 when they already are)."""
    if q.include_simulated:
        return 0
    with_simulated = dataclasses.replace(q.offer_query(), include_simulated=True)
    return len(book.query(with_simulated, now=now)) - total


def offer_rows(entries: Iterable[BookEntry]) -> list[OfferOut]:
    return [OfferOut.of(e.offer, e.peer_id) for e in entries]


def price_estimate(body: EstimateIn, *, decimals: int, fee_bps: int = DEFAULT_FEE_BPS) -> EstimateOut:
    """The pricing engine's answer: hourly price per GPU (Decimal string) and integer amounts."""
    try:
        hourly = hourly_price(PriceInputs(body.gpu_model, body.vram_mib, body.power_limit_w),
                              Decimal(body.multiplier))
        per_gpu = rate_per_minute(hourly, decimals)
        est = estimate(per_gpu * body.gpu_count, body.minutes, fee_bps)
    except PricingError as exc:
        raise ApiError(str(exc), "invalid_request") from exc
    return EstimateOut(
        gpu_model=body.gpu_model, gpu_count=body.gpu_count, minutes=body.minutes,
        hourly_price_per_gpu=str(hourly), decimals=decimals,
        rate_per_gpu_minute=per_gpu, rate_per_minute=est.rate_per_minute,
        total=est.total, fee=est.fee, provider_net=est.provider_net, fee_bps=fee_bps,
    )
