"""Upload links: ``POST /api/v1/storage-links/{bucket}/{key}`` (the wallet, with its token) signs
one; ``PUT /api/v1/push/{bucket}/{key}?wallet&max&exp&sig`` (anyone holding it, no token) stores
the body there, once: a link that stored its object refuses other bodies after (``link_used``;
the same body again gets the same answer, for a pusher whose answer was lost); one whose upload
failed may be tried again. See ``upload_links``."""

from __future__ import annotations

import hashlib
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from dgpu.node.adapters.storage_names import validate_bucket, validate_cid, validate_key

from ..errors import BadRequest, Forbidden
from ..http_state import Claims, State
from ..schemas import ObjectOut
from ..upload_links import MAX_LINK_TTL_S, UploadGrant
from ..uploads import store_object

__all__ = ["UploadLinkIn", "UploadLinkOut", "router"]


class UploadLinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_bytes: int = Field(gt=0, le=2**40)
    ttl_s: int = Field(default=24 * 3600, gt=0, le=MAX_LINK_TTL_S)


class UploadLinkOut(BaseModel):
    #: path and query, relative to the bootstrap node's URL
    path: str
    expires_at: int
    max_bytes: int


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["storage"])

    @r.post("/storage-links/{bucket}/{key:path}", response_model=UploadLinkOut)
    async def sign_link(bucket: str, key: str, body: UploadLinkIn, claims: Claims, state: State) -> UploadLinkOut:
        validate_bucket(bucket)
        key = validate_key(key)
        max_bytes = min(body.max_bytes, state.config.max_upload_bytes)
        grant = UploadGrant(claims.wallet, bucket, key, max_bytes, int(state.clock()) + body.ttl_s)
        return UploadLinkOut(path=grant.path_and_query(state.upload_links.sign(grant)),
                             expires_at=grant.expires_at, max_bytes=max_bytes)

    @r.put("/push/{bucket}/{key:path}", response_model=ObjectOut,
           openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}})
    async def push(
        bucket: str, key: str, request: Request, state: State, *,
        wallet: Annotated[str, Query(max_length=64)],
        max_bytes: Annotated[int, Query(alias="max", gt=0, le=2**40)],
        exp: Annotated[int, Query(ge=0, le=2**40)],
        sig: Annotated[str, Query(max_length=128)],
        cid: Annotated[str | None, Header(alias="x-dgpu-cid", max_length=80)] = None,
    ) -> ObjectOut:
        validate_bucket(bucket)
        key = validate_key(key)
        if cid is None:
            raise BadRequest("an upload link's PUT must declare the body's cid (x-dgpu-cid)", code="cid_missing")
        validate_cid(cid)
        grant = UploadGrant(wallet, bucket, key, max_bytes, exp)
        declared = request.headers.get("content-length")
        state.upload_links.check(grant, sig, state.clock(), int(declared) if declared and declared.isdigit() else None)
        # one object per link: a link seen in transit (logs, a proxy) cannot overwrite the result
        link = hashlib.sha256(sig.encode("ascii", "replace")).digest()
        if not await state.db.run(state.db.sync.claim_upload_link, link, exp, state.clock()):
            held = await state.db.run(state.db.sync.get_object, wallet, bucket, key)
            if held is not None and held.cid == cid:  # a retry of the upload that landed: the same answer
                return ObjectOut(bucket=bucket, key=key, cid=held.cid, size=held.size, updated_at=held.updated_at)
            raise Forbidden("this upload link was already used (one upload per link)", code="link_used")
        stored = False
        try:
            staged, now = await store_object(state, request, wallet, bucket, key, expected_cid=cid,
                                             max_bytes=max_bytes)
            stored = True
        finally:
            with anyio.CancelScope(shield=True):
                await state.db.run(state.db.sync.finish_upload_link, link, stored=stored)
        return ObjectOut(bucket=bucket, key=key, cid=staged.cid, size=staged.size, updated_at=now)

    return r
