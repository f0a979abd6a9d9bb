"""``/api/v1/blobs`` and ``/api/v1/pins``: content-addressed uploads, downloads, signed links, pins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from dgpu.node.adapters.storage_names import validate_cid
from dgpu.protocol.auth import Role

from ..errors import BadRequest, Forbidden, NotFound, QuotaExceeded
from ..http_state import MAX_LIST, BootstrapState, Claims, State, authenticated
from ..schemas import BlobOut, LinkIn, LinkOut, PinOut, PinsOut
from ..storage import Staged
from ..uploads import ingest, release, store_if_new, stream_blob

__all__ = ["router"]


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["storage"])

    async def pin_staged(state: BootstrapState, wallet: str, staged: Staged) -> None:
        stored = await store_if_new(state, staged)
        try:
            await state.db.run(
                state.db.sync.pin,
                wallet,
                staged.cid,
                size=staged.size,
                now=state.clock(),
                quota=state.config.quota_bytes,
            )
        except QuotaExceeded:
            if stored:  # under the cid lock, and no row references it: safe to delete
                await state.store.delete(staged.cid)
            raise

    async def upload(state: BootstrapState, request: Request, wallet: str, cid: str | None) -> BlobOut:
        staged = await ingest(state, request, wallet, cid, lambda s: pin_staged(state, wallet, s))
        return BlobOut(cid=staged.cid, size=staged.size)

    @r.put(
        "/blobs/{cid}", response_model=BlobOut, status_code=201,
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}},
    )
    async def put_blob(cid: str, request: Request, claims: Claims, state: State) -> BlobOut:
        """Upload and pin a blob; the body must hash to ``cid`` (sha256-<hex>)."""
        validate_cid(cid)
        return await upload(state, request, claims.wallet, cid)

    @r.post(
        "/blobs", response_model=BlobOut, status_code=201,
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}}},
    )
    async def post_blob(request: Request, claims: Claims, state: State) -> BlobOut:
        """Upload and pin a blob; answers its cid."""
        return await upload(state, request, claims.wallet, None)

    @r.get("/blobs/{cid}", response_class=StreamingResponse)
    async def get_blob(
        cid: str,
        request: Request,
        state: State,
        expires: Annotated[int | None, Query()] = None,
        sig: Annotated[str | None, Query(max_length=128)] = None,
    ) -> StreamingResponse:
        """Stream a blob: with a bearer token of a wallet holding it, or a signed link."""
        validate_cid(cid)
        if sig is not None or expires is not None:
            if sig is None or expires is None:
                raise Forbidden("invalid download link", code="link_invalid")
            state.links.check(cid, expires, sig, state.clock())
        else:
            claims = await authenticated(request, state)
            if claims.role is not Role.ADMIN and not await state.db.run(
                state.db.sync.is_pinned_by, claims.wallet, cid
            ):
                raise NotFound("no such blob for this wallet")
        size = await state.db.run(state.db.sync.blob_size, cid)
        if size is None:
            raise NotFound("no such blob")
        return stream_blob(state, cid, size)

    @r.post("/blobs/{cid}/link", response_model=LinkOut)
    async def make_link(cid: str, body: LinkIn, claims: Claims, state: State) -> LinkOut:
        """A download URL for ``cid`` that works without a token until it expires."""
        validate_cid(cid)
        if body.ttl_s > state.config.max_link_ttl_s:
            raise BadRequest(f"ttl_s is limited to {state.config.max_link_ttl_s}", code="bad_ttl")
        if not await state.db.run(state.db.sync.is_pinned_by, claims.wallet, cid):
            raise NotFound("no such blob for this wallet")
        expires_at = int(state.clock()) + body.ttl_s
        signature = state.links.sign(cid, expires_at)
        return LinkOut(
            url=f"/api/v1/blobs/{cid}?expires={expires_at}&sig={signature}", expires_at=expires_at
        )

    @r.post("/pins/{cid}", response_model=PinOut, status_code=201)
    async def pin(cid: str, claims: Claims, state: State) -> PinOut:
        """Keep a pin on a blob this wallet uploaded (idempotent). A blob another wallet uploaded
        is not pinned (upload its bytes instead): a cid alone grants no read, and the answer is
        the same 404 whether or not the bytes are stored here (no existence oracle)."""
        validate_cid(cid)
        if not await state.db.run(state.db.sync.is_pinned_by, claims.wallet, cid):
            raise NotFound("no such blob for this wallet; upload it instead")
        async with state.cid_locks.hold(cid):
            try:
                size = await state.db.run(
                    state.db.sync.pin, claims.wallet, cid, size=None, now=state.clock(),
                    quota=state.config.quota_bytes,
                )
            except KeyError:
                raise NotFound("no such blob; upload it instead") from None
        return PinOut(cid=cid, size=size, pinned_at=state.clock())

    @r.delete("/pins/{cid}", status_code=204)
    async def unpin(cid: str, claims: Claims, state: State) -> Response:
        validate_cid(cid)
        if not await state.db.run(state.db.sync.unpin, claims.wallet, cid):
            raise NotFound("this wallet has no pin on that cid")
        await release(state, cid)
        return Response(status_code=204)

    @r.get("/pins", response_model=PinsOut)
    async def list_pins(
        claims: Claims,
        state: State,
        after: Annotated[str, Query(max_length=80)] = "",
        limit: Annotated[int, Query(gt=0, le=MAX_LIST)] = 100,
    ) -> PinsOut:
        rows = await state.db.run(state.db.sync.list_pins, claims.wallet, limit, after)
        usage = await state.db.run(state.db.sync.usage, claims.wallet)
        return PinsOut(
            pins=[PinOut(cid=r.cid, size=r.size, pinned_at=r.pinned_at) for r in rows],
            usage_bytes=usage,
            quota_bytes=state.config.quota_bytes,
        )

    return r
