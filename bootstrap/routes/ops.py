"""``/metrics`` (Prometheus, not in the OpenAPI schema) and ``/healthz``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..http_state import State
from ..metrics import CONTENT_TYPE_LATEST

__all__ = ["router"]


def router() -> APIRouter:
    r = APIRouter()

    @r.get("/metrics", include_in_schema=False)
    async def prometheus(state: State) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @r.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return r
