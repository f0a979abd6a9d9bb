"""Prometheus metrics of the bootstrap HTTP app (one registry per app, never the global one,
so several apps in one process, as in tests, do not collide).

Label values are bounded: ``route`` is the matched route template (or ``unmatched``), never
the raw path; ``reason`` and ``result`` come from fixed code sets.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "dgpu_http_requests_total", "HTTP requests answered", ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "dgpu_http_request_duration_seconds", "Time to answer an HTTP request (headers)",
            ["method", "route"], registry=r,
        )
        self.logins = Counter("dgpu_auth_logins_total", "Login attempts", ["result"], registry=r)
        self.registrations = Counter(
            "dgpu_auth_registrations_total", "Role registrations", ["result"], registry=r
        )
        self.refreshes = Counter(
            "dgpu_auth_refreshes_total", "Refresh-token uses", ["result"], registry=r
        )
        self.uploads = Counter(
            "dgpu_storage_uploads_total", "Blob uploads", ["result"], registry=r
        )
        self.upload_bytes = Counter(
            "dgpu_storage_upload_bytes_total", "Bytes of blobs stored by accepted uploads",
            registry=r,
        )
        self.download_bytes = Counter(
            "dgpu_storage_download_bytes_total", "Bytes of blobs sent", registry=r
        )
        self.rejections = Counter(
            "dgpu_rejections_total", "Requests refused, by error code", ["reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware counting requests by method, route template and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        async def send_wrapper(message: Any) -> None:
            nonlocal observed
            if message["type"] == "http.response.start" and not observed:
                observed = True
                self._observe(scope, int(message["status"]), start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not observed:  # the app failed (or was cancelled) before answering
                self._observe(scope, 500, start)

    def _observe(self, scope: Any, status: int, start: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = str(scope.get("method", "?"))
        self.metrics.http_requests.labels(method, template, str(status)).inc()
        self.metrics.http_latency.labels(method, template).observe(time.perf_counter() - start)
