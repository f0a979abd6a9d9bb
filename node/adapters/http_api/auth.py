"""``/api/v1/auth``: proxied to the bootstrap node; the caller signs, the node passes messages on."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dgpu.node.adapters.bootstrap_client import upstream_json
from dgpu.node.adapters.http_api.context import UPSTREAM, ApiContext, Ctx
from dgpu.protocol.auth import ChallengeIn, RefreshIn, SignedIn

__all__ = ["auth_router"]


def auth_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=UPSTREAM)

    async def forward(ctx: ApiContext, path: str, body: BaseModel) -> JSONResponse:
        data = await upstream_json(ctx.upstream(), "POST", path, body.model_dump(mode="json"))
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
