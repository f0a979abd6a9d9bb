"""The result-push port: a job's packed result PUT to the renter's signed upload link."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["ResultPusher"]


class ResultPusher(Protocol):
    async def push(self, url: str, path: Path, cid: str, size: int) -> str | None:
        """PUT the file at ``path`` (``size`` bytes hashing to ``cid``) to ``url``; None when it
        landed, else why not, in words that never hold the link's query (its signature)."""
        ...
