"""The renter's side of ``/dgpu/forward/1.0.0`` and ``/dgpu/shell/1.0.0``.

:func:`serve_forward` listens on 127.0.0.1:LOCAL (the ``LocalListen`` port) and carries every
accepted TCP connection over a stream of its own to the provider, which connects to the job's
port inside the job. :func:`open_shell` opens a terminal in the job and returns a
:class:`ShellSession`. Both start with a signed opening message and wait for the provider's
signed answer (:func:`open_access`); a refusal raises ``RejectedError`` with the reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from dgpu.node.errors import RejectedError, StreamError
from dgpu.node.ports.access import ByteStream, Listener, LocalListen
from dgpu.node.ports.network import FramedStream, Network
from dgpu.node.services.forward import ENVELOPE_TTL_S, Clock, Nonce, open_sealed, pump
from dgpu.protocol.envelope import ReplayCache, seal
from dgpu.protocol.errors import RemoteProtocolError
from dgpu.protocol.forward import (
    MAX_DATA_FRAME,
    TO_RENTER_ACCESS,
    ForwardOpen,
    ShellFrame,
    ShellOpen,
    parse_exit,
    parse_shell_frame,
    resize_frame,
    shell_frame,
    signal_frame,
)
from dgpu.protocol.ids import FORWARD_PROTOCOL, MAX_FRAME_BYTES, SHELL_PROTOCOL
from dgpu.protocol.keys import PublicKey, SigningKey
from dgpu.protocol.messages import Reject

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["AccessTarget", "ForwardInfo", "PortForward", "ShellSession", "open_access", "open_shell",
           "parse_forward", "run_shell", "serve_forward"]

log = logging.getLogger(__name__)

#: the provider connects to the job's port and answers within this
ANSWER_TIMEOUT_S: Final = 20.0
#: connections one forward carries at once on the renter's side (the provider bounds them too)
MAX_LOCAL_CONNECTIONS: Final = 32
#: the renter's own idle bound (the provider's is usually shorter and decides)
RENTER_IDLE_S: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class PortForward:
    """``[LOCAL:]PORT``: the job's ``job_port`` on 127.0.0.1:``local_port`` (0: any free port)."""

    job_port: int
    local_port: int

    def __post_init__(self) -> None:
        if not 1 <= self.job_port <= 65535 or not 0 <= self.local_port <= 65535:
            raise ValueError("ports are 1..65535 (a local port may be 0: any free one)")


def parse_forward(text: str) -> PortForward:
    """``"8888"`` → 8888 on local 8888; ``"9000:8888"`` → job's 8888 on local 9000. ValueError if bad."""
    local, sep, port = text.rpartition(":")
    try:
        return PortForward(int(port), int(local) if sep else int(port))
    except ValueError:
        raise ValueError(f"a forward is [LOCAL:]PORT, got {text!r}") from None


@dataclass(frozen=True, slots=True)
class ForwardInfo:
    """A forward as it stands: listening on ``local_port``, or failed with ``error``."""

    job_port: int
    local_port: int
    error: str | None = None

    @property
    def line(self) -> str:
        if self.error is not None:
            return f"forward of job:{self.job_port} failed: {self.error}"
        return f"forwarding 127.0.0.1:{self.local_port} -> job:{self.job_port}"


@dataclass(frozen=True, slots=True)
class AccessTarget:
    """Where a rental's job runs and who may reach it: the renter's key and the provider."""

    network: Network
    key: SigningKey
    provider_peer: str
    provider: PublicKey
    job_id: str
    clock: Clock
    nonce: Nonce


async def open_access(target: AccessTarget, protocol: str, opening: Any) -> FramedStream:
    """Open a stream, send the signed ``opening``, wait for the provider's yes; raises
    RejectedError (refused) or NetworkError (unreachable, no answer)."""
    fs = await target.network.open_stream(target.provider_peer, protocol, max_frame_bytes=MAX_FRAME_BYTES,
                                          read_timeout_s=ANSWER_TIMEOUT_S)
    try:
        now = target.clock()
        await fs.write_frame(seal(opening, target.key, nonce=target.nonce(), issued_at=now,
                                  expires_at=now + ENVELOPE_TTL_S))
        data = await fs.read_frame(timeout_s=ANSWER_TIMEOUT_S)
        try:
            answer = open_sealed(data, TO_RENTER_ACCESS, clock=target.clock, replay=ReplayCache(capacity=4),
                                 expected_signer=target.provider).message
        except RemoteProtocolError as exc:
            raise RejectedError("protocol_error", f"bad answer from the provider: {exc}") from exc
        if isinstance(answer, Reject):
            raise RejectedError(str(answer.code), answer.message)
        if answer.job_id != target.job_id:
            raise RejectedError("protocol_error", "the provider answered for another job")
        return fs
    except BaseException:
        await fs.reset()
        raise


async def _carry(target: AccessTarget, port: int, conn: ByteStream) -> None:
    try:
        try:
            fs = await open_access(target, FORWARD_PROTOCOL, ForwardOpen(job_id=target.job_id, port=port))
        except (RejectedError, StreamError) as exc:
            log.warning("forward to job:%d refused: %s", port, exc)
            return
        try:
            await pump(conn, fs, idle_timeout_s=RENTER_IDLE_S)
        except StreamError:
            pass
        finally:
            await fs.close()
    except Exception as exc:  # one connection's failure (dial, stream) must not end the forward
        log.warning("forward to job:%d: %s", port, exc)
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()


async def serve_forward(target: AccessTarget, forward: PortForward, listen: LocalListen, *,
                        task_status: TaskStatus[ForwardInfo] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on 127.0.0.1 and carry each connection into the job until cancelled. Started with
    ``nursery.start``, it reports the bound port (or the bind error, and returns)."""
    try:
        listener: Listener = await listen(forward.local_port)
    except OSError as exc:
        task_status.started(ForwardInfo(forward.job_port, forward.local_port, f"cannot listen: {exc.strerror}"))
        return
    live = [0]
    try:
        task_status.started(ForwardInfo(forward.job_port, listener.port))
        async with trio.open_nursery() as nursery:
            while True:
                conn = await listener.accept()
                if live[0] >= MAX_LOCAL_CONNECTIONS:
                    await conn.aclose()  # bounded: a local flood does not open unbounded streams
                    continue
                live[0] += 1

                async def one(conn: ByteStream = conn) -> None:
                    try:
                        await _carry(target, forward.job_port, conn)
                    finally:
                        live[0] -= 1

                nursery.start_soon(one)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()


class ShellSession:
    """A terminal in the job: ``send`` keystrokes, ``resize``, ``signal``; ``receive`` output
    until it returns None, then ``exit_code`` holds the command's code (None if the stream broke)."""

    def __init__(self, fs: FramedStream) -> None:
        self._fs = fs
        self.exit_code: int | None = None

    async def send(self, data: bytes) -> None:
        for i in range(0, len(data), MAX_DATA_FRAME):
            await self._fs.write_frame(shell_frame(ShellFrame.DATA, data[i:i + MAX_DATA_FRAME]))

    async def resize(self, rows: int, cols: int) -> None:
        await self._fs.write_frame(resize_frame(rows, cols))

    async def signal(self, signum: int) -> None:
        await self._fs.write_frame(signal_frame(signum))

    async def close_input(self) -> None:
        await self._fs.write_frame(shell_frame(ShellFrame.EOF))

    async def receive(self) -> bytes | None:
        """Output bytes; None at the end (the exit code arrived, or the stream ended)."""
        while self.exit_code is None:
            try:
                frame = await self._fs.read_frame(timeout_s=RENTER_IDLE_S, max_bytes=MAX_DATA_FRAME + 1)
                kind, payload = parse_shell_frame(frame)
            except (StreamError, RemoteProtocolError):
                return None
            if kind is ShellFrame.DATA:
                return payload
            if kind is ShellFrame.EXIT:
                self.exit_code = parse_exit(payload)
        return None

    async def aclose(self) -> None:
        await self._fs.close()


async def open_shell(target: AccessTarget, argv: Sequence[str] = (), *, rows: int = 24, cols: int = 80,
                     tty: bool = True) -> ShellSession:
    """A terminal in the job (``argv`` empty: ``/bin/sh``); RejectedError if refused."""
    opening = ShellOpen(job_id=target.job_id, argv=tuple(argv), rows=max(1, min(1000, rows)),
                        cols=max(1, min(1000, cols)), tty=tty)
    return ShellSession(await open_access(target, SHELL_PROTOCOL, opening))


async def run_shell(session: ShellSession, on_output: Callable[[bytes], Any]) -> int | None:
    """Read until the end, handing output to ``on_output``; the exit code (None: stream broke)."""
    while (data := await session.receive()) is not None:
        on_output(data)
    with contextlib.suppress(StreamError):
        await session.aclose()
    return session.exit_code
