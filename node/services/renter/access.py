"""A rental's way into its running job from the renter's side: forwarded ports and shells.

:func:`serve_forwards` runs beside the job stream (``Rental.run``): once the provider reports the
job RUNNING, each requested forward listens on 127.0.0.1 and carries its connections into the
job (``services.forward_client``); when the job ends every listener and connection is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from dgpu.node.ports.access import LocalListen
from dgpu.node.services.forward_client import AccessTarget, ForwardInfo, PortForward, parse_forward, serve_forward
from dgpu.node.services.renter.errors import RenterError

__all__ = ["as_forwards", "serve_forwards"]


def as_forwards(items: Sequence[int | str | PortForward]) -> tuple[PortForward, ...]:
    """``8888``, ``"9000:8888"`` or a PortForward each; RenterError for a bad one or a repeat."""
    out: list[PortForward] = []
    for item in items:
        try:
            if isinstance(item, PortForward):
                out.append(item)
            elif isinstance(item, int):
                out.append(PortForward(item, item))
            else:
                out.append(parse_forward(item))
        except ValueError as exc:
            raise RenterError(str(exc)) from exc
    if len({f.job_port for f in out}) != len(out):
        raise RenterError("a job port is forwarded twice")
    return tuple(out)


async def serve_forwards(target: AccessTarget, forwards: Sequence[PortForward], listen: LocalListen, *,
                         running: trio.Event, done: trio.Event,
                         on_forward: Callable[[ForwardInfo], None] | None = None) -> None:
    """From RUNNING until ``done``: every forward listening and carrying its connections."""
    async with trio.open_nursery() as nursery:
        async def stop_when_done() -> None:
            await done.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_done)
        await running.wait()
        for forward in forwards:
            info: ForwardInfo = await nursery.start(serve_forward, target, forward, listen)
            if on_forward is not None:
                on_forward(info)
