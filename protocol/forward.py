"""Interactive access to a running job: forwarded TCP ports and a terminal, over the p2p connection.

Two stream protocols, both opened by the renter of an agreement to its provider:

- ``/dgpu/forward/1.0.0``: one stream per TCP connection. The renter sends a signed
  :class:`ForwardOpen` (job, port); the provider answers a signed :class:`AccessGranted` once it
  has connected to that port inside the job, or a :class:`~dgpu.protocol.messages.Reject`. Then
  each frame is TCP payload, at most :data:`MAX_DATA_FRAME` bytes; an empty frame ends that
  direction (a half-close), and closing the stream ends the connection.
- ``/dgpu/shell/1.0.0``: the renter sends a signed :class:`ShellOpen` (job, command, terminal
  size), the provider answers :class:`AccessGranted` or ``Reject``; then every frame starts with a
  :class:`ShellFrame` byte: terminal bytes either way, a window size or a signal from the renter,
  and the exit code last from the provider.

Data frames are not signed: the libp2p connection under them is already authenticated to the
two peers' keys and encrypted; the signed opening message binds the stream to the agreement's
renter. The provider decides everything else (whether it allows access at all, the port list of
the job request, connection and rate bounds).
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints, TypeAdapter

from .errors import MalformedError
from .messages import Id, Port, Reject, _adapter, _Model

__all__ = [
    "MAX_DATA_FRAME",
    "TO_PROVIDER_FORWARD",
    "TO_PROVIDER_SHELL",
    "TO_RENTER_ACCESS",
    "AccessGranted",
    "ForwardOpen",
    "ShellFrame",
    "ShellOpen",
    "exit_frame",
    "parse_exit",
    "parse_resize",
    "parse_shell_frame",
    "resize_frame",
    "shell_frame",
    "signal_frame",
]

#: payload of one data frame (well inside MAX_FRAME_BYTES, and below py-libp2p's ~64 KiB
#: interleaving hazard on a loaded muxer)
MAX_DATA_FRAME: Final = 32 * 1024
#: signals a renter may send into its shell (SIGINT, SIGQUIT, SIGTERM, SIGKILL, SIGHUP)
ALLOWED_SIGNALS: Final = frozenset({1, 2, 3, 9, 15})

TermSize = Annotated[int, Field(ge=1, le=1000, strict=True)]


class ForwardOpen(_Model):
    """The renter asks for a TCP connection to ``port`` inside its running job."""

    type: Literal["forward_open"] = "forward_open"
    job_id: Id
    port: Port


class ShellOpen(_Model):
    """The renter asks for a terminal in its running job; an empty ``argv`` is the job's shell."""

    type: Literal["shell_open"] = "shell_open"
    job_id: Id
    argv: Annotated[tuple[Annotated[str, StringConstraints(max_length=4096)], ...], Field(max_length=64)] = ()
    rows: TermSize = 24
    cols: TermSize = 80
    #: run on a terminal (PTY): resizing and Ctrl-C as keystrokes; False: plain pipes
    tty: bool = True


class AccessGranted(_Model):
    """The provider's yes: the stream now carries data frames."""

    type: Literal["access_granted"] = "access_granted"
    job_id: Id
    what: Literal["forward", "shell"]


TO_PROVIDER_FORWARD: TypeAdapter[ForwardOpen] = _adapter(ForwardOpen)
TO_PROVIDER_SHELL: TypeAdapter[ShellOpen] = _adapter(ShellOpen)
TO_RENTER_ACCESS: TypeAdapter[AccessGranted | Reject] = _adapter(AccessGranted, Reject)


class ShellFrame(enum.IntEnum):
    """The first byte of a shell data frame."""

    DATA = 0
    """Terminal bytes: keystrokes to the provider, output to the renter."""
    RESIZE = 1
    """Renter → provider: the window's rows and columns (two big-endian u16)."""
    SIGNAL = 2
    """Renter → provider: one byte, a signal number from :data:`ALLOWED_SIGNALS`."""
    EOF = 3
    """Renter → provider: no more input."""
    EXIT = 4
    """Provider → renter, last: the command's exit code (big-endian i16)."""


def shell_frame(kind: ShellFrame, payload: bytes = b"") -> bytes:
    return bytes((kind,)) + payload


def resize_frame(rows: int, cols: int) -> bytes:
    return shell_frame(ShellFrame.RESIZE, struct.pack(">HH", rows, cols))


def signal_frame(signum: int) -> bytes:
    return shell_frame(ShellFrame.SIGNAL, bytes((signum,)))


def exit_frame(code: int) -> bytes:
    return shell_frame(ShellFrame.EXIT, struct.pack(">h", max(-255, min(255, code))))


def parse_shell_frame(frame: bytes) -> tuple[ShellFrame, bytes]:
    """(kind, payload); raises MalformedError for an empty frame, an unknown kind, a bad payload."""
    if not frame:
        raise MalformedError("an empty shell frame")
    try:
        kind = ShellFrame(frame[0])
    except ValueError:
        raise MalformedError(f"unknown shell frame kind {frame[0]}") from None
    payload = frame[1:]
    if len(payload) > MAX_DATA_FRAME:
        raise MalformedError("shell frame too large")
    sizes = {ShellFrame.RESIZE: 4, ShellFrame.SIGNAL: 1, ShellFrame.EOF: 0, ShellFrame.EXIT: 2}
    if kind in sizes and len(payload) != sizes[kind]:
        raise MalformedError(f"a {kind.name} frame carries {sizes[kind]} bytes")
    if kind is ShellFrame.SIGNAL and payload[0] not in ALLOWED_SIGNALS:
        raise MalformedError(f"signal {payload[0]} may not be sent")
    return kind, payload


def parse_resize(payload: bytes) -> tuple[int, int]:
    rows, cols = struct.unpack(">HH", payload)
    return max(1, min(1000, rows)), max(1, min(1000, cols))


def parse_exit(payload: bytes) -> int:
    return int(struct.unpack(">h", payload)[0])
