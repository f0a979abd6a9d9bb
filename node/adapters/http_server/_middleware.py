"""Pure ASGI middleware shared by the bootstrap's and the node's apps: body limits, route timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import PayloadTooLarge, error_response

__all__ = ["BodyLimitMiddleware", "RouteObserver", "RouteTimingMiddleware"]

#: what a route-timing middleware reports: (method, route template, status, seconds)
RouteObserver = Callable[[str, str, int, float], None]


class RouteTimingMiddleware:
    """Pure ASGI middleware: reports every HTTP request's method, route *template* (never the raw
    path, which would make metric labels unbounded), status and duration to ``observe``. A request
    the app fails (or that is cancelled) before answering is reported as 500."""

    def __init__(self, app: Any, observe: RouteObserver) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def record_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            self.observe(str(scope.get("method", "?")), template, status[0], time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuse JSON/form bodies over ``max_bytes`` (uploads stream and are checked by route)."""

    def __init__(self, app: Any, max_bytes: int, exempt_prefixes: Sequence[str]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = tuple(exempt_prefixes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = error_response(
                    413, "too_large", f"request bodies are limited to {self.max_bytes} bytes"
                )
                await response(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"request bodies are limited to {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)
