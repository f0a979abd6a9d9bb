"""Serve an ASGI app (FastAPI) with uvicorn inside the trio process, through trio-asyncio.

Theory of operation: uvicorn is asyncio-only, the rest of dGPU is trio. ``serve_http`` opens a
trio-asyncio loop (one thread, the same process), binds the listening socket itself (so port 0
works and the bound port is known before the first request), starts uvicorn's ``Server`` on that
socket as an asyncio task and reports the port through ``task_status`` once uvicorn has run the
app's lifespan startup and is accepting connections.

Cancellation: when the calling trio scope is cancelled the helper asks uvicorn to stop
(``should_exit``), which closes the listener, lets in-flight requests finish for at most
``graceful_timeout`` seconds, runs the app's lifespan shutdown and returns; after
``graceful_timeout`` plus a margin it forces the exit. The socket is closed in every case.

uvicorn's own signal handling is disabled: a library helper must not replace the process's
SIGINT/SIGTERM handlers (trio owns them and delivers KeyboardInterrupt as usual).

anyio (under Starlette: threadpool for sync dependencies, ``anyio.to_thread``) binds
``asyncio.get_running_loop`` when its asyncio backend is first imported. trio-asyncio replaces
that function at *its* import so it can find the trio-asyncio loop; if anyio's backend was
imported first (pytest plugins do this), anyio keeps the original, which sees no loop and
raises "no running event loop". ``_align_anyio`` rebinds anyio's reference to the patched
function (which still falls back to the original outside trio-asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Generator
from typing import Any

import trio
import trio_asyncio
import uvicorn

from ._guard import ConnectionLimits, guarded_protocol

__all__ = ["HttpServerError", "serve_http"]

log = logging.getLogger(__name__)

# How often the helper looks at uvicorn's ``started`` flag while waiting for the startup.
_STARTUP_POLL_S = 0.01


class HttpServerError(Exception):
    """The HTTP server could not start (bind failed, or the app's lifespan startup failed)."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's Server without process-wide signal handlers (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn answers a failed lifespan startup with sys.exit(), which escapes an asyncio
        # loop run by trio-asyncio and hangs it; stop quietly instead (serve_http then raises).
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            self.should_exit = True
            return

        async def already_started() -> None:
            return None

        self.lifespan.startup = already_started
        await super().startup(sockets)


def _align_anyio() -> None:
    backend = sys.modules.get("anyio._backends._asyncio")
    if backend is not None and getattr(backend, "get_running_loop", None) is not (
        asyncio.get_running_loop
    ):
        setattr(backend, "get_running_loop", asyncio.get_running_loop)  # noqa: B010


_align_anyio()


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only turns TCP_NODELAY on for sockets whose proto says TCP,
    # and without it every small response waits ~40 ms for the peer's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise HttpServerError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


async def serve_http(
    app: Any,
    host: str,
    port: int,
    *,
    graceful_timeout: float = 5.0,
    limits: ConnectionLimits | None = None,
    backlog: int = 1024,
    log_level: str = "warning",
    uvicorn_options: dict[str, Any] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; report the bound port via task_status.

    ``port`` 0 picks a free port. ``limits`` bounds slow and greedy clients (header and body
    read timeouts, a minimum upload rate, open connections in total and per client address;
    see ``_guard``), so neither a flood nor a crowd of slow sockets can lock others out.
    ``uvicorn_options`` passes further ``uvicorn.Config`` keywords (for example ``h11_max_
    incomplete_event_size``). The access log is off by default: URLs may carry signed-link
    signatures, which must not reach logs.

    Raises ``HttpServerError`` if the socket cannot be bound or the app's startup fails; in that
    case ``task_status.started`` was never called.
    """
    _align_anyio()
    limits = limits if limits is not None else ConnectionLimits()
    options: dict[str, Any] = {
        # uvicorn's h11 protocol, with the guard's deadlines and connection bounds
        "http": guarded_protocol(limits),
        "lifespan": "on",
        "log_level": log_level,
        "access_log": False,
        "log_config": None,  # leave the process's logging configuration alone
        # A backstop behind the guard's connection bound: requests still running after their
        # connection went away also count (uvicorn answers 503 beyond it).
        "limit_concurrency": 2 * limits.max_connections,
        # Bounds how long a cancelled server waits for in-flight requests.
        "timeout_graceful_shutdown": graceful_timeout,
        "server_header": False,
        # every answer, served files included: browsers must not sniff a blob into HTML
        "headers": [("X-Content-Type-Options", "nosniff")],
    }
    options.update(uvicorn_options or {})
    config = uvicorn.Config(app, **options)
    sock = _bind(host, port, backlog)
    bound_port: int = sock.getsockname()[1]
    server = _EmbeddedServer(config)
    done = trio.Event()
    failure: list[BaseException] = []

    async def run_server() -> None:
        try:
            # Shielded: uvicorn is stopped through should_exit below, never by cancelling its
            # asyncio task midway (that would skip the lifespan shutdown and leak connections).
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(server.serve)(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits this way when the lifespan startup fails
            failure.append(exc)
        finally:
            sock.close()
            done.set()

    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            try:
                while not server.started and not done.is_set():
                    await trio.sleep(_STARTUP_POLL_S)
                if server.started:
                    log.info("HTTP server listening on %s:%d", host, bound_port)
                    task_status.started(bound_port)
                    await done.wait()
            finally:
                server.should_exit = True
                with trio.CancelScope(shield=True):
                    # uvicorn honours should_exit within 0.1 s, then waits graceful_timeout.
                    with trio.move_on_after(graceful_timeout + 2.0):
                        await done.wait()
                    if not done.is_set():
                        server.force_exit = True
                        await done.wait()
    finally:
        sock.close()
    if not server.started:
        # Raised outside the nurseries so callers see HttpServerError, not an ExceptionGroup.
        raise HttpServerError(
            f"the HTTP server on {host}:{bound_port} failed to start"
        ) from (failure[0] if failure else None)
