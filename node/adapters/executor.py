"""What the job executors (Docker, script) share besides their port (``JobSpec``,
``ResourceLimits``, ``JobHandle``, ...: :mod:`dgpu.node.ports.execution`)."""

from __future__ import annotations

__all__ = ["split_lines"]


def split_lines(buffer: bytearray, data: bytes, max_chunk: int) -> list[bytes]:
    """Append ``data`` to ``buffer``; pop and return every complete line (with b"\\n").

    A line longer than ``max_chunk`` is emitted in pieces of ``max_chunk`` bytes so one
    line without a newline can never grow the buffer without bound.
    """
    buffer += data
    out: list[bytes] = []
    start = 0
    while True:
        nl = buffer.find(b"\n", start)
        if nl < 0:
            break
        line_end = nl + 1
        while line_end - start > max_chunk:
            out.append(bytes(buffer[start : start + max_chunk]))
            start += max_chunk
        out.append(bytes(buffer[start:line_end]))
        start = line_end
    while len(buffer) - start > max_chunk:
        out.append(bytes(buffer[start : start + max_chunk]))
        start += max_chunk
    del buffer[:start]
    return out
