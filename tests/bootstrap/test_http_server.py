"""serve_http: port 0, startup failure, clean shutdown on cancellation (lifespan runs)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from fastapi import FastAPI

from dgpu.node.adapters.http_server import HttpServerError, serve_http


def _app(events: list[str], fail_startup: bool = False) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if fail_startup:
            raise RuntimeError("boom")
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def test_port_zero_serves_and_cancellation_shuts_down_cleanly() -> None:
    events: list[str] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, _app(events), "127.0.0.1", 0)
        assert port > 0
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{port}/ping")
            assert r.json() == {"pong": "yes"}
        nursery.cancel_scope.cancel()
    assert events == ["startup", "shutdown"]
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/ping")


async def test_two_servers_side_by_side() -> None:
    async with trio.open_nursery() as nursery:
        a = await nursery.start(serve_http, _app([]), "127.0.0.1", 0)
        b = await nursery.start(serve_http, _app([]), "127.0.0.1", 0)
        assert a != b
        async with httpx.AsyncClient() as client:
            for port in (a, b):
                assert (await client.get(f"http://127.0.0.1:{port}/ping")).status_code == 200
        nursery.cancel_scope.cancel()


async def test_startup_failure_and_busy_port_raise() -> None:
    with pytest.raises(HttpServerError):
        await serve_http(_app([], fail_startup=True), "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, _app([]), "127.0.0.1", 0)
        with pytest.raises(HttpServerError):
            await serve_http(_app([]), "127.0.0.1", port)
        nursery.cancel_scope.cancel()
