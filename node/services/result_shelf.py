"""Keeping a finished job's result for its renter: packed into one blob only the renter may fetch,
and, when the request carries an upload link, pushed there too (a failed push is reported in the
ResultRef, never fails the job)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Final

import trio

from dgpu.node.ports.push import ResultPusher
from dgpu.node.services.blobs import BlobError, BlobShelf, pack_dir
from dgpu.node.services.job_feed import FEED_RETENTION_S
from dgpu.protocol.messages import ResultRef

__all__ = ["PUSH_DEADLINE_S", "RESULT_TTL_S", "shelve_result"]

log = logging.getLogger(__name__)

#: results stay on the provider as long as the job's feed (for a renter that re-attaches)
RESULT_TTL_S: Final = FEED_RETENTION_S
#: the push, retries included, ends before the renter stops waiting for the ResultRef (120 s)
PUSH_DEADLINE_S: Final = 100.0


async def shelve_result(blobs: BlobShelf, pusher: ResultPusher | None, job_id: str, output_dir: Path, *,
                        renter: str, upload: str | None) -> ResultRef | None:
    """Pack the job's outputs into one blob only the renter may fetch (and push it); None on failure."""
    tmp = blobs.temp_path()
    try:
        size = await trio.to_thread.run_sync(pack_dir, output_dir, tmp)
        if size > blobs.max_blob_bytes:
            raise BlobError(f"the packed result is {size} bytes, over the blob limit")
        entry = await blobs.add_file(tmp, allowed=[renter], ttl_s=RESULT_TTL_S, move=True)
    except (BlobError, OSError) as exc:
        log.warning("job %s: could not keep the result: %s", job_id[:12], exc)
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    ref = ResultRef(job_id=job_id, cid=entry.cid, size=entry.size)
    if upload is None:
        return ref
    why: str | None = "this provider does not push results"
    if pusher is not None:
        why = "the push did not end in time"
        with trio.move_on_after(PUSH_DEADLINE_S):
            why = await pusher.push(upload, entry.path, entry.cid, entry.size)
    if why is not None:
        log.warning("job %s: could not push the result to the renter's link: %s", job_id[:12], why)
    return ref.model_copy(update={"pushed": why is None, "push_error": why})
