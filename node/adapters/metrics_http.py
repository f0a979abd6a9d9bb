"""``--metrics-port``: a node's (or bootstrap node's) ``/metrics`` on its own small HTTP server.

It serves one registry in Prometheus' text format (and ``/healthz``), whatever else the process
runs: a provider started the way an operator starts it (no local API) is scrapeable. It runs on
the shared HTTP layer (``http_server.serve_http``: uvicorn under trio-asyncio, with its
slow-client guard) under tighter bounds than an API, since only a scraper or two should ever
connect; every request is a GET with no body. It listens on loopback unless told otherwise.
"""

from __future__ import annotations

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from dgpu.node.adapters.http_server import BodyLimitMiddleware, ConnectionLimits, serve_http

__all__ = ["METRICS_LIMITS", "metrics_app", "serve_metrics"]

#: a scraper or two, and an operator's curl: a crowd of idle sockets is displaced or refused
METRICS_LIMITS = ConnectionLimits(header_timeout_s=10.0, body_timeout_s=10.0, max_connections=32,
                                  max_connections_per_address=16)


def metrics_app(registry: CollectorRegistry) -> Starlette:
    """``GET /metrics`` (the registry, rendered at each request) and ``GET /healthz``."""

    async def metrics(request: Request) -> Response:
        del request
        # the collectors read live objects without awaiting: this runs in the trio thread too
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        del request
        return PlainTextResponse("ok\n")

    app = Starlette(routes=[Route("/metrics", metrics, methods=["GET"]), Route("/healthz", healthz, methods=["GET"])])
    app.add_middleware(BodyLimitMiddleware, max_bytes=0, exempt_prefixes=())
    return app


async def serve_metrics(registry: CollectorRegistry, host: str, port: int, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``registry`` on ``http://host:port/metrics`` until cancelled; reports the bound port.
    Raises ``HttpServerError`` when the port cannot be bound."""
    await serve_http(metrics_app(registry), host, port, limits=METRICS_LIMITS, task_status=task_status,
                     uvicorn_options={"h11_max_incomplete_event_size": 16 * 1024})
