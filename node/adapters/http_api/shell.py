"""``/api/v1/jobs/{id}/shell``: a terminal in a running API job, as a WebSocket (for tools and the CLI).

Query: ``cmd`` (repeatable; none: the job's ``/bin/sh``), ``rows``, ``cols``, ``tty`` (default
true). Then binary messages are terminal bytes both ways; the client sends text messages
``{"resize": [rows, cols]}``, ``{"signal": 2}`` or ``{"eof": true}``; the node's last message is
``{"exit": CODE}`` (or ``{"error": "..."}``) and it closes. The shell itself is the renter
workflow's (``Rental.shell`` over ``/dgpu/shell/1.0.0``): the provider decides whether to allow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from pydantic import Field

from dgpu.node.adapters.http_api.context import Ctx, Protected, in_trio
from dgpu.node.errors import NetworkError, RejectedError
from dgpu.node.services import api as svc
from dgpu.node.services.forward_client import ShellSession

__all__ = ["shell_router"]

#: one message from the client at most (keystrokes, a paste)
MAX_MESSAGE_BYTES = 64 * 1024


def shell_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], dependencies=Protected)

    @router.websocket("/{job_id}/shell")
    async def shell(websocket: WebSocket, job_id: Annotated[str, Field(max_length=64)], ctx: Ctx, *,
                    cmd: Annotated[list[str] | None, Query(max_length=64)] = None,
                    rows: Annotated[int, Query(ge=1, le=1000)] = 24, cols: Annotated[int, Query(ge=1, le=1000)] = 80,
                    tty: bool = True) -> None:
        await websocket.accept()
        try:
            job = ctx.jobs.get(job_id)
        except svc.NotFound as exc:
            await _finish(websocket, {"error": exc.message})
            return
        if job.open_shell is None:
            await _finish(websocket, {"error": f"job {job_id[:32]} is not running ({job.state})"})
            return
        try:
            session = await in_trio(job.open_shell, tuple(cmd or ()), rows, cols, tty)
        except (RejectedError, NetworkError) as exc:
            await _finish(websocket, {"error": f"the provider refused the shell: {exc}"})
            return
        await _bridge(websocket, session)

    return router


async def _finish(websocket: WebSocket, message: dict[str, Any]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_text(json.dumps(message))
        await websocket.close()


async def _bridge(websocket: WebSocket, session: ShellSession) -> None:
    """Client messages into the shell, shell output to the client, until either ends."""

    async def keys() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data:
                await in_trio(session.send, data[:MAX_MESSAGE_BYTES])
            elif text:
                await _control(session, text)

    async def output() -> None:
        while (data := await in_trio(session.receive)) is not None:
            await websocket.send_bytes(data)

    tasks = [asyncio.ensure_future(output()), asyncio.ensure_future(keys())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        await in_trio(session.aclose)
    code = session.exit_code
    await _finish(websocket, {"exit": code} if code is not None else {"error": "the shell's stream broke"})


async def _control(session: ShellSession, text: str) -> None:
    try:
        control = json.loads(text[:1024])
    except ValueError:
        return
    if not isinstance(control, dict):
        return
    with contextlib.suppress(ValueError, TypeError):
        if "resize" in control:
            rows, cols = (int(v) for v in control["resize"])
            await in_trio(session.resize, max(1, min(1000, rows)), max(1, min(1000, cols)))
        elif "signal" in control:
            await in_trio(session.signal, int(control["signal"]))
        elif control.get("eof"):
            await in_trio(session.close_input)
