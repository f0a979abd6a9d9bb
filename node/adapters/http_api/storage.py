"""``/api/v1/storage``: streamed through to the bootstrap node's pinning API with the node's own token."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from dgpu.node.adapters import http_server as http_errors
from dgpu.node.adapters.bootstrap_client import decode_upstream, unreachable
from dgpu.node.adapters.http_api.context import ERRORS, UPSTREAM, ApiContext, Ctx, Protected
from dgpu.node.adapters.storage_names import validate_bucket, validate_key
from dgpu.node.services.api.schema import ErrorOut, ObjectOut

__all__ = ["STREAMING_PREFIXES", "UploadLinkOut", "links_router", "storage_router"]

#: request bodies under these paths are streamed, so the JSON body limit does not apply
STREAMING_PREFIXES = ("/api/v1/storage/",)


def _target(bucket: str, key: str) -> str:
    validate_bucket(bucket)
    key = validate_key(key)
    return f"/api/v1/storage/{bucket}/{urllib.parse.quote(key, safe='/')}"


async def _auth_headers(ctx: ApiContext) -> dict[str, str]:
    return {"authorization": "Bearer " + await ctx.session.token(ctx.upstream())}


def storage_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/storage", tags=["storage"], dependencies=Protected,
                       responses={**ERRORS, **UPSTREAM, 404: {"model": ErrorOut}})

    @router.put("/{bucket}/{key:path}", response_model=ObjectOut,
                openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}})
    async def put_object(bucket: str, key: str, request: Request, ctx: Ctx) -> ObjectOut:
        path = _target(bucket, key)
        limit = ctx.settings.max_upload_bytes

        async def body() -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > limit:
                    raise http_errors.PayloadTooLarge(f"uploads through the node are limited to {limit} bytes")
                yield chunk

        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise http_errors.PayloadTooLarge(f"uploads through the node are limited to {limit} bytes")
        headers = await _auth_headers(ctx)
        try:
            response = await ctx.upstream().put(path, content=body(), headers=headers)
        except httpx.HTTPError as exc:
            raise unreachable(exc) from exc
        return ObjectOut(**decode_upstream(response.status_code, response.content))

    @router.get("/{bucket}/{key:path}", response_class=StreamingResponse,
                responses={200: {"content": {"application/octet-stream": {}}}})
    async def get_object(bucket: str, key: str, ctx: Ctx) -> StreamingResponse:
        path = _target(bucket, key)
        http = ctx.upstream()
        request = http.build_request("GET", path, headers=await _auth_headers(ctx))
        try:
            response = await http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise unreachable(exc) from exc
        if response.status_code >= 400:
            content = await response.aread()
            await response.aclose()
            decode_upstream(response.status_code, content)  # raises UpstreamError
        headers = {k: v for k, v in response.headers.items()
                   if k in ("content-length", "etag", "content-type")}
        return StreamingResponse(response.aiter_bytes(), status_code=response.status_code,
                                 headers=headers, media_type="application/octet-stream",
                                 background=BackgroundTask(response.aclose))

    @router.delete("/{bucket}/{key:path}", status_code=204)
    async def delete_object(bucket: str, key: str, ctx: Ctx) -> Response:
        path = _target(bucket, key)
        try:
            response = await ctx.upstream().delete(path, headers=await _auth_headers(ctx))
        except httpx.HTTPError as exc:
            raise unreachable(exc) from exc
        if response.status_code >= 400:
            decode_upstream(response.status_code, response.content)
        return Response(status_code=204)

    return router


class UploadLinkOut(BaseModel):
    #: the signed link (``rent``'s ``result_upload``): whoever holds it may store this one object
    url: str
    expires_at: int
    max_bytes: int


def links_router() -> APIRouter:
    """``POST /api/v1/storage-links/{bucket}/{key}``: a signed upload link of the node's bucket."""
    router = APIRouter(prefix="/api/v1/storage-links", tags=["storage"], dependencies=Protected,
                       responses={**ERRORS, **UPSTREAM})

    @router.post("/{bucket}/{key:path}", response_model=UploadLinkOut)
    async def upload_link(bucket: str, key: str, ctx: Ctx, max_bytes: int = Query(1024**3, gt=0, le=2**40),
                          ttl_s: int = Query(24 * 3600, gt=0, le=7 * 24 * 3600)) -> UploadLinkOut:
        path = "/api/v1/storage-links" + _target(bucket, key).removeprefix("/api/v1/storage")
        try:
            response = await ctx.upstream().post(path, json={"max_bytes": max_bytes, "ttl_s": ttl_s},
                                                 headers=await _auth_headers(ctx))
        except httpx.HTTPError as exc:
            raise unreachable(exc) from exc
        body = decode_upstream(response.status_code, response.content)
        return UploadLinkOut(url=ctx.settings.bootstrap_url.rstrip("/") + str(body["path"]),
                             expires_at=int(body["expires_at"]), max_bytes=int(body["max_bytes"]))

    return router
