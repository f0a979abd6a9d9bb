"""The access port: reaching into a running job (a TCP port, a terminal) and a localhost listener.

The provider's forward and shell services (``services.forward``, ``services.shell``) see a job
only through :class:`JobAccess`; the adapter (``adapters.job_access``) enters the job's network
namespace to connect, or starts a process in its namespaces (Docker exec, nsenter), so the job
itself never gets a network. The renter's side listens on 127.0.0.1 through :class:`LocalListen`
(``adapters.forward_tcp``). Errors are :class:`dgpu.node.errors.ExecutionError` (the job is not
there, its port refused) and ``OSError`` for a listener that cannot bind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

__all__ = ["ByteStream", "JobAccess", "Listener", "LocalListen", "ShellProcess"]


class ByteStream(Protocol):
    """A connected TCP stream (``trio.SocketStream`` has this surface)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Some bytes; b"" at the end of the peer's data. Raises ``trio.BrokenResourceError``."""
        ...

    async def send_all(self, data: bytes) -> None: ...

    async def send_eof(self) -> None:
        """Half-close: the peer reads end-of-data; we can still receive."""
        ...

    async def aclose(self) -> None: ...


class ShellProcess(Protocol):
    """A command running in a job, on a terminal or pipes. ``read`` and ``write`` may run at once."""

    async def read(self, max_bytes: int) -> bytes:
        """Output (stdout and stderr merged); b"" once the command closed its output."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close_input(self) -> None: ...

    async def resize(self, rows: int, cols: int) -> None: ...

    async def signal(self, signum: int) -> None: ...

    async def wait(self) -> int:
        """The exit code (128 + signal when killed by one)."""
        ...

    async def kill(self) -> None:
        """End it now (and release what it holds); idempotent, never raises."""
        ...


class JobAccess(Protocol):
    """The provider's way into its running jobs (found by job id)."""

    async def connect(self, job_id: str, port: int) -> ByteStream:
        """A TCP connection to 127.0.0.1:``port`` inside the job's network namespace."""
        ...

    async def shell(self, job_id: str, argv: Sequence[str], *, rows: int, cols: int, tty: bool) -> ShellProcess:
        """Start ``argv`` (empty: ``/bin/sh``) in the job's namespaces, as the job's user."""
        ...


class Listener(Protocol):
    """A TCP listener on 127.0.0.1 (the renter's end of a forward)."""

    @property
    def port(self) -> int: ...

    async def accept(self) -> ByteStream: ...

    async def aclose(self) -> None: ...


#: bind 127.0.0.1:port (0: any free port); raises OSError when it cannot
LocalListen = Callable[[int], Awaitable[Listener]]
