"""``/api/v1/storage/{bucket}/{key}``: a wallet's named objects over the blob store."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from dgpu.node.adapters.storage_names import validate_bucket, validate_key

from ..errors import NotFound
from ..http_state import MAX_LIST, Claims, State
from ..schemas import ObjectOut, ObjectsOut
from ..uploads import release, store_object, stream_blob

__all__ = ["router"]


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1/storage", tags=["storage"])

    @r.put(
        "/{bucket}/{key:path}", response_model=ObjectOut,
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}},
    )
    async def put_object(
        bucket: str, key: str, request: Request, claims: Claims, state: State
    ) -> ObjectOut:
        validate_bucket(bucket)
        key = validate_key(key)
        staged, now = await store_object(state, request, claims.wallet, bucket, key)
        return ObjectOut(bucket=bucket, key=key, cid=staged.cid, size=staged.size, updated_at=now)

    @r.get("/{bucket}/{key:path}", response_class=StreamingResponse)
    async def get_object(
        bucket: str, key: str, claims: Claims, state: State
    ) -> StreamingResponse:
        validate_bucket(bucket)
        key = validate_key(key)
        row = await state.db.run(state.db.sync.get_object, claims.wallet, bucket, key)
        if row is None:
            raise NotFound("no such key")
        return stream_blob(state, row.cid, row.size)

    @r.delete("/{bucket}/{key:path}", status_code=204)
    async def delete_object(bucket: str, key: str, claims: Claims, state: State) -> Response:
        validate_bucket(bucket)
        key = validate_key(key)
        cid = await state.db.run(state.db.sync.delete_object, claims.wallet, bucket, key)
        if cid is None:
            raise NotFound("no such key")
        await release(state, cid)
        return Response(status_code=204)

    @r.get("/{bucket}", response_model=ObjectsOut)
    async def list_objects(
        bucket: str,
        claims: Claims,
        state: State,
        *,
        prefix: Annotated[str, Query(max_length=1024)] = "",
        after: Annotated[str, Query(max_length=1024)] = "",
        limit: Annotated[int, Query(gt=0, le=MAX_LIST)] = 100,
    ) -> ObjectsOut:
        validate_bucket(bucket)
        rows = await state.db.run(
            state.db.sync.list_objects, claims.wallet, bucket,
            prefix=prefix, limit=limit, after=after,
        )
        return ObjectsOut(
            objects=[
                ObjectOut(bucket=r.bucket, key=r.key, cid=r.cid, size=r.size,
                          updated_at=r.updated_at)
                for r in rows
            ]
        )

    return r
