"""Calls to a ledger that refuses for load (``LedgerBusy``: HTTP 429) retried with backoff.

A local network of many nodes on one address starts them all at once, and the development
ledger's per-address limit then refuses some of them; such a node waits and tries again
(exponential backoff with jitter, at least what the ledger asked for) instead of exiting.
Anything else the call raises propagates at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from dgpu.protocol.ledger import LedgerBusy

__all__ = ["retry_busy"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def retry_busy(call: Callable[[], Awaitable[T]], *, what: str, tries: int = 10, first_delay_s: float = 0.5,
                     max_delay_s: float = 10.0, sleep: Callable[[float], Awaitable[None]] = trio.sleep,
                     jitter: Callable[[], float] = random.random) -> T:
    """``await call()``, retried while the ledger answers busy; the last LedgerBusy after
    ``tries`` attempts (about a minute with the defaults)."""
    delay = first_delay_s
    for attempt in range(1, tries + 1):
        try:
            return await call()
        except LedgerBusy as exc:
            if attempt == tries:
                raise
            wait = max(exc.retry_after_s, delay) * (1 + jitter())  # spread the nodes out
            log.info("%s: the ledger is busy; retrying in %.1f s (%d/%d)", what, wait, attempt, tries)
            await sleep(wait)
            delay = min(delay * 2, max_delay_s)
    raise AssertionError("unreachable")
