"""Pushes a job's packed result to the renter's bootstrap upload link (``PUT`` with the cid declared;
the bootstrap checks the signature, size, hash and quota). Bounded in size and time, retried with
backoff on network errors and 5xx/429; the link's query (its signature) never reaches a log or a
reason."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx
import trio

from dgpu._http import async_client

__all__ = ["MAX_PUSH_BYTES", "HttpResultPusher", "redact"]

log = logging.getLogger(__name__)

#: the largest result pushed (the bootstrap applies its own, usually lower, limit too)
MAX_PUSH_BYTES: Final = 8 * 1024**3
_CHUNK = 1024 * 1024


def redact(url: str) -> str:
    """The link without its query or credentials: what may be shown."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    f = await trio.open_file(path, "rb")
    async with f:
        while chunk := await f.read(_CHUNK):
            yield chunk


class HttpResultPusher:
    def __init__(self, *, attempts: int = 4, first_backoff_s: float = 1.0, timeout_s: float = 60.0,
                 max_bytes: int = MAX_PUSH_BYTES) -> None:
        self.attempts, self.first_backoff_s, self.timeout_s, self.max_bytes = (
            attempts, first_backoff_s, timeout_s, max_bytes)

    async def push(self, url: str, path: Path, cid: str, size: int) -> str | None:
        if size > self.max_bytes:
            return f"the result is {size} bytes, over the {self.max_bytes} pushed at most"
        shown, why = redact(url), "not tried"
        async with async_client(timeout=httpx.Timeout(self.timeout_s)) as http:
            for attempt in range(self.attempts):
                if attempt:
                    await trio.sleep(self.first_backoff_s * 2 ** (attempt - 1))
                try:
                    response = await http.put(url, content=_chunks(path),
                                              headers={"x-dgpu-cid": cid, "content-length": str(size)})
                except httpx.HTTPError as exc:
                    why = f"{type(exc).__name__} from {shown}"
                    continue
                if response.status_code < 300:
                    return None
                why = f"{shown} answered {response.status_code} {_code(response)}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # refused (expired, forged, too large, over quota): trying again is no use
                log.info("pushing a result: %s (attempt %d of %d)", why, attempt + 1, self.attempts)
        return why[:200]


def _code(response: httpx.Response) -> str:
    try:
        err = response.json().get("error", {})
        return str(err.get("code", ""))[:40] if isinstance(err, dict) else ""
    except (ValueError, AttributeError):
        return ""
