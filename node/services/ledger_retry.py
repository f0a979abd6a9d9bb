"""Calls to a ledger that refuses for load (``LedgerBusy``: HTTP 429) or cannot be reached,
retried with backoff.

A local network of many nodes on one address starts them all at once, and the development
ledger's per-address limit then refuses some of them; such a node waits and tries again
(exponential backoff with jitter, at least what the ledger asked for) instead of exiting.
:func:`wait_for_ledger` is for the provider's start-up reads: a provider started while its
ledger is down (an outage, a node not yet up) keeps its network node running and waits, saying
so, instead of exiting. Anything else the call raises propagates at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from dgpu.protocol.ledger import LedgerBusy, TransportError

__all__ = ["retry_busy", "wait_for_ledger"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


async def retry_busy(call: Callable[[], Awaitable[T]], *, what: str, tries: int = 10, first_delay_s: float = 0.5,
                     max_delay_s: float = 10.0, sleep: Sleep = trio.sleep,
                     jitter: Callable[[], float] = random.random) -> T:
    """``await call()``, retried while the ledger answers busy; the last LedgerBusy after
    ``tries`` attempts (about a minute with the defaults)."""
    return await _retry(call, what=what, retry_on=LedgerBusy, tries=tries, first_delay_s=first_delay_s,
                        max_delay_s=max_delay_s, sleep=sleep, jitter=jitter)


async def wait_for_ledger(call: Callable[[], Awaitable[T]], *, what: str, url: str = "", tries: int | None = None,
                          first_delay_s: float = 0.5, max_delay_s: float = 30.0, sleep: Sleep = trio.sleep,
                          jitter: Callable[[], float] = random.random) -> T:
    """``await call()`` (an idempotent read), retried while the ledger is busy or unreachable
    (``TransportError``), with no limit unless ``tries`` is given."""
    return await _retry(call, what=what, retry_on=TransportError, tries=tries, first_delay_s=first_delay_s,
                        max_delay_s=max_delay_s, sleep=sleep, jitter=jitter, url=url)


async def _retry(call: Callable[[], Awaitable[T]], *, what: str, retry_on: type[TransportError], tries: int | None,
                 first_delay_s: float, max_delay_s: float, sleep: Sleep, jitter: Callable[[], float],
                 url: str = "") -> T:
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except retry_on as exc:
            if tries is not None and attempt >= tries:
                raise
            asked = exc.retry_after_s if isinstance(exc, LedgerBusy) else 0.0
            wait = max(asked, delay) * (1 + jitter())  # spread the nodes out
            of = f"/{tries}" if tries is not None else ""
            if isinstance(exc, LedgerBusy):
                log.info("%s: the ledger is busy; retrying in %.1f s (%d%s)", what, wait, attempt, of)
            else:  # an outage or a wrong URL: the operator must hear of it
                where = f" at {url}" if url else ""
                log.warning("%s: cannot reach the ledger%s (%s); retrying in %.0f s (%d%s)",
                            what, where, exc, wait, attempt, of)
            await sleep(wait)
            delay = min(delay * 2, max_delay_s)
