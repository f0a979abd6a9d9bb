"""Length-prefixed frames on a byte stream, with a size limit and a deadline on every read.

One frame = unsigned varint length + that many bytes. The length is checked against the
limit *before* the body is read, so a peer cannot make us buffer more than ``max_bytes``.
Every read runs under ``trio.fail_after``: py-libp2p's stream reads never time out on their
own (LIBP2P-NOTES.md, pitfall 6). The libp2p stream exceptions are converted here, once, into
:mod:`dgpu.node.errors`.

Theory of operation: :class:`FramedStream` wraps anything with ``read(n)`` / ``write(b)`` /
``close()`` / ``reset()`` (a libp2p ``INetStream`` or, in tests, an in-memory stream), so the
services above never see a libp2p type.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import trio

from dgpu.node.errors import (
    FrameTooLargeError,
    ReadTimeoutError,
    StreamClosedError,
)

__all__ = ["FramedStream", "RawStream", "encode_frame"]

_MAX_VARINT_BYTES = 5  # 5 x 7 bits = 32 GiB: far above any limit we accept


class RawStream(Protocol):
    """The byte-stream surface FramedStream needs (libp2p INetStream has it)."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


def encode_frame(payload: bytes) -> bytes:
    """Varint length prefix + payload."""
    n = len(payload)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    return bytes(out) + payload


def _libp2p_stream_errors() -> tuple[type[BaseException], ...]:
    """libp2p's "the stream broke" exceptions (imported lazily: tests run without a host)."""
    from libp2p.io.exceptions import IOException
    from libp2p.network.stream.exceptions import StreamError as Libp2pStreamError
    from libp2p.stream_muxer.exceptions import MuxedConnError, MuxedStreamError

    return (IOException, Libp2pStreamError, MuxedStreamError, MuxedConnError,
            trio.BrokenResourceError, trio.ClosedResourceError, EOFError, ConnectionError)


class FramedStream:
    """Frames over one stream. Not safe for two concurrent writers: serialise with ``send_lock``."""

    def __init__(self, raw: RawStream, *, remote_peer: str = "", max_frame_bytes: int,
                 read_timeout_s: float, first_frame_timeout_s: float | None = None) -> None:
        self.raw = raw
        #: peer ID (base58) of the other side; "" for in-memory streams
        self.remote_peer = remote_peer
        self.max_frame_bytes = max_frame_bytes
        self.read_timeout_s = read_timeout_s
        #: the first frame's deadline caps whatever the reader asks for (inbound streams: a peer
        #: that opens a stream and says nothing stops holding a slot); None = no extra cap
        self._first_frame_timeout_s = first_frame_timeout_s
        #: held while a frame is written, so frames never interleave on the wire
        self.send_lock = trio.Lock()
        self._errors = _libp2p_stream_errors()
        self._close_errors: tuple[type[BaseException], ...] = (*self._errors, RuntimeError)
        self._buf = bytearray()

    async def _fill(self) -> None:
        try:
            data = await self.raw.read(64 * 1024)
        except self._errors as exc:
            raise StreamClosedError(f"stream from {self.remote_peer or 'peer'} closed") from exc
        if not data:
            raise StreamClosedError(f"stream from {self.remote_peer or 'peer'} ended")
        self._buf += data

    def _parse_length(self) -> tuple[int, int] | None:
        """(length, prefix size) if the buffer holds a whole varint, else None."""
        value = 0
        for i in range(min(len(self._buf), _MAX_VARINT_BYTES)):
            b = self._buf[i]
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return value, i + 1
        if len(self._buf) >= _MAX_VARINT_BYTES:
            raise FrameTooLargeError("frame length prefix too long")
        return None

    async def read_frame(self, *, timeout_s: float | None = None,
                         max_bytes: int | None = None) -> bytes:
        """One frame's payload. Raises ReadTimeoutError, FrameTooLargeError, StreamClosedError.

        Cancel-safe: bytes are consumed only when a whole frame is there, so after a
        ReadTimeoutError the caller may read again. After the other errors the stream is dead.
        """
        limit = self.max_frame_bytes if max_bytes is None else max_bytes
        deadline_s = self.read_timeout_s if timeout_s is None else timeout_s
        if self._first_frame_timeout_s is not None:
            deadline_s = min(deadline_s, self._first_frame_timeout_s)
        try:
            with trio.fail_after(deadline_s):
                while True:
                    parsed = self._parse_length()
                    if parsed is not None:
                        n, head = parsed
                        if n > limit:
                            raise FrameTooLargeError(
                                f"frame of {n} bytes exceeds the {limit}-byte limit")
                        if len(self._buf) >= head + n:
                            out = bytes(self._buf[head:head + n])
                            del self._buf[:head + n]
                            self._first_frame_timeout_s = None
                            return out
                    await self._fill()
        except trio.TooSlowError:
            raise ReadTimeoutError("no complete frame before the read deadline") from None

    async def write_frame(self, payload: bytes) -> None:
        if len(payload) > self.max_frame_bytes:
            raise FrameTooLargeError(
                f"refusing to send a {len(payload)}-byte frame (limit {self.max_frame_bytes})"
            )
        async with self.send_lock:
            try:
                await self.raw.write(encode_frame(payload))
            except self._errors as exc:
                raise StreamClosedError("stream closed while writing") from exc

    async def close(self) -> None:
        """Close our side; never raises (the peer may already be gone)."""
        with trio.move_on_after(2) as scope:  # a wedged muxer must not stall shutdown
            scope.shield = True
            with contextlib.suppress(*self._close_errors):
                await self.raw.close()

    async def reset(self) -> None:
        """Abort the stream; never raises."""
        with trio.move_on_after(2) as scope:
            scope.shield = True
            with contextlib.suppress(*self._close_errors):
                await self.raw.reset()
