"""Prometheus metrics of the bootstrap HTTP app (one registry per app, never the global one,
so several apps in one process, as in tests, do not collide).

Label values are bounded: ``route`` is the matched route template (or ``unmatched``), never
the raw path; ``reason`` and ``result`` come from fixed code sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series (dgpu.node.metrics)


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

    def observe_request(self, method: str, template: str, status: int, seconds: float) -> None:
        """One answered HTTP request (for :class:`~dgpu.node.adapters.http_server.RouteTimingMiddleware`)."""
        self.http_requests.labels(method, template, str(status)).inc()
        self.http_latency.labels(method, template).observe(seconds)
