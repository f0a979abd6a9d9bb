"""Revocation of access tokens, asked of the bootstrap node (introspection of the token family).

Tokens are verified offline, but a logout (or a refresh reuse, or an admin's revocation) must
reach this node within seconds, not at expiry. The node asks the bootstrap
``GET /api/v1/auth/families/{fam}`` and keeps the answer for ``check_s`` seconds: a revoked
token is refused at most ``check_s`` after its revocation. Introspection rather than a pushed or
fetched list: this API serves one wallet, so it sees few families and few requests, and one bounded
question per family per ``check_s`` needs no list that grows with every session on the network.
When the bootstrap cannot answer, the token is refused (503): failing open would undo revocation.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

import httpx

from dgpu.node.adapters import http_server as http_errors
from dgpu.node.services import api as svc

__all__ = ["RevocationCache"]

MAX_FAMILIES = 1024  # answers kept (memory bound; the least recently checked is forgotten)


class RevocationCache:
    """Whether a token family is revoked, as the bootstrap said at most ``check_s`` ago."""

    def __init__(self, check_s: float, clock: Callable[[], float]) -> None:
        self.check_s = check_s
        self.clock = clock
        #: family -> (revoked, when the bootstrap said so)
        self._answers: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self._lock = asyncio.Lock()

    async def check(self, family: str, http: httpx.AsyncClient) -> None:
        """Raises Unauthorized when ``family`` is revoked, Unavailable when nobody can say."""
        if not await self._revoked(family, http):
            return
        raise http_errors.Unauthorized("token revoked (logged out or revoked at the bootstrap)",
                                       code="token_revoked")

    async def _revoked(self, family: str, http: httpx.AsyncClient) -> bool:
        async with self._lock:  # one question per family at a time
            known = self._answers.get(family)
            now = self.clock()
            if known is not None and (known[0] or now - known[1] < self.check_s):
                self._answers.move_to_end(family)
                return known[0]  # a revocation is final
            try:
                r = await http.get(f"/api/v1/auth/families/{family}")
                r.raise_for_status()
                revoked = r.json()["revoked"] is True
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                raise svc.Unavailable("the bootstrap node cannot say whether this token is revoked; "
                                      "try again", "revocation_unknown") from None
            self._answers[family] = (revoked, now)
            self._answers.move_to_end(family)
            while len(self._answers) > MAX_FAMILIES:
                self._answers.popitem(last=False)
            return revoked
