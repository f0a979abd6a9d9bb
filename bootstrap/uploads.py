"""Streaming an upload into staging, committing it, releasing and serving blobs (shared by the
blob and the object routes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from .errors import ApiError, BadRequest, HashMismatch, PayloadTooLarge, QuotaExceeded
from .http_state import BootstrapState
from .storage import Staged

__all__ = ["ingest", "release", "store_if_new", "store_object", "stream_blob"]


async def ingest(
    state: BootstrapState,
    request: Request,
    wallet: str,
    expected_cid: str | None,
    commit: Callable[[Staged], Awaitable[None]],
    *,
    max_bytes: int | None = None,
) -> Staged:
    """``_ingest``, counted in the upload metrics (outcome code, bytes)."""
    try:
        staged = await _ingest(state, request, wallet, expected_cid, commit, max_bytes=max_bytes)
    except ApiError as exc:
        state.metrics.uploads.labels(exc.code).inc()
        raise
    state.metrics.uploads.labels("ok").inc()
    state.metrics.upload_bytes.inc(staged.size)
    return staged


async def _ingest(
    state: BootstrapState,
    request: Request,
    wallet: str,
    expected_cid: str | None,
    commit: Callable[[Staged], Awaitable[None]],
    *,
    max_bytes: int | None,
) -> Staged:
    """Stream the request body into staging, verify it, then ``commit`` it under the cid lock.
    ``max_bytes`` lowers the configured upload limit (an upload link's own).

    On any refusal or error the staged file is deleted and nothing is recorded.
    """
    cfg = state.config
    limit = cfg.max_upload_bytes if max_bytes is None else min(max_bytes, cfg.max_upload_bytes)
    usage = await state.db.run(state.db.sync.usage, wallet)
    remaining = max(0, cfg.quota_bytes - usage)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise BadRequest("bad Content-Length", code="bad_length") from None
        check_size(declared_size, limit, remaining)
    async with state.staging.spool() as spool:
        # request.stream() yields the body as the server receives it (~64 KiB pieces): the
        # memory held per upload is bounded by the spool's buffer, not by the body.
        async for chunk in request.stream():
            check_size(spool.size + len(chunk), limit, remaining)
            await spool.write(chunk)
        staged = await spool.finish()
        if expected_cid is not None and staged.cid != expected_cid:
            raise HashMismatch("the uploaded bytes do not hash to the cid; nothing was kept")
        async with state.cid_locks.hold(staged.cid):
            await commit(staged)
    return staged


def check_size(size: int, max_upload: int, remaining: int) -> None:
    if size > max_upload:
        raise PayloadTooLarge(f"uploads are limited to {max_upload} bytes")
    if size > remaining:
        raise QuotaExceeded("this upload would exceed the wallet's storage quota")


async def store_object(state: BootstrapState, request: Request, wallet: str, bucket: str, key: str, *,
                     expected_cid: str | None = None, max_bytes: int | None = None) -> tuple[Staged, float]:
    """Stream the body in and name it ``bucket/key`` of ``wallet`` (quota checked, the object it
    replaces released); (what was stored, when)."""
    replaced: list[str] = []
    now = state.clock()

    async def commit(staged: Staged) -> None:
        stored = await store_if_new(state, staged)
        try:
            old = await state.db.run(
                state.db.sync.put_object, wallet, bucket, key,
                cid=staged.cid, size=staged.size, now=now, quota=state.config.quota_bytes,
            )
        except QuotaExceeded:
            if stored:
                await state.store.delete(staged.cid)
            raise
        if old is not None:
            replaced.append(old)

    staged = await ingest(state, request, wallet, expected_cid, commit, max_bytes=max_bytes)
    for old in replaced:
        await release(state, old)
    return staged, now


async def store_if_new(state: BootstrapState, staged: Staged) -> bool:
    """Hand the staged file to the store unless the blob is already known; True if stored."""
    if await state.db.run(state.db.sync.blob_size, staged.cid) is not None:
        return False
    await state.store.put_staged(staged)
    return True


async def release(state: BootstrapState, cid: str) -> None:
    """Delete the blob's bytes if no pin or object references it any more."""
    async with state.cid_locks.hold(cid):
        if await state.db.run(state.db.sync.release, cid):
            await state.store.delete(cid)


def stream_blob(state: BootstrapState, cid: str, size: int) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in state.store.read(cid):
            state.metrics.download_bytes.inc(len(chunk))
            yield chunk

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={
            "content-length": str(size),
            "etag": f'"{cid}"',
            "cache-control": "private, max-age=0",
        },
    )
