"""The renter's end of a forward: a TCP listener on 127.0.0.1 only (the ``LocalListen`` port).

Loopback only: a forwarded port is the renter's own way into its job, never offered to its
network. ``listen_local(0)`` takes any free port (tests, benchmarks).
"""

from __future__ import annotations

import trio

from dgpu.node.ports.access import ByteStream

__all__ = ["LocalTcpListener", "listen_local"]

#: pending connections the kernel queues before we accept them
_BACKLOG = 32


class LocalTcpListener:
    """A bound, listening socket on 127.0.0.1."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener
        self.port: int = listener.socket.getsockname()[1]

    async def accept(self) -> ByteStream:
        return await self._listener.accept()

    async def aclose(self) -> None:
        await self._listener.aclose()


async def listen_local(port: int) -> LocalTcpListener:
    """Listen on 127.0.0.1:``port``; OSError when the port is taken or not ours to bind."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await sock.bind(("127.0.0.1", port))
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return LocalTcpListener(trio.SocketListener(sock))
