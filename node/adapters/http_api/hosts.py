"""DNS-rebinding and cross-site guards of the local API (a pure ASGI middleware).

A page on a domain that resolves to 127.0.0.1 reaches this server from the owner's browser with
``Host: evil.example``: only configured host names (loopback names by default) are answered.
A page on another origin may still send simple requests to ``localhost`` (no CORS preflight):
requests that change state are refused when the browser says they are cross-site (``Origin`` on
another host, or ``Sec-Fetch-Site`` other than same-origin/none). Clients that are not browsers
(the CLI, httpx) send neither header and are not affected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["LOOPBACK_NAMES", "HostGuardMiddleware", "host_name"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_SITE = frozenset({"same-origin", "none"})


def host_name(authority: str) -> str:
    """The lower-case host of ``host[:port]`` or ``[v6]:port`` (no port, no brackets)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


class HostGuardMiddleware:
    def __init__(self, app: ASGIApp, *, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = LOOPBACK_NAMES | {name.lower().strip("[]") for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope["method"], headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code, message = refusal
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, method: str, headers: dict[str, str]) -> tuple[str, str] | None:
        if host_name(headers.get("host", "")) not in self.allowed:
            return "bad_host", "this API answers only its configured host names (--api-host-name)"
        if method in _SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site")
        if site is not None and site.lower() not in _SAME_SITE:
            return "cross_origin", "cross-site browser requests may not change state"
        origin = headers.get("origin")
        if origin is not None and (origin == "null" or host_name(urlsplit(origin).netloc) not in self.allowed):
            return "cross_origin", "cross-origin browser requests may not change state"
        return None
