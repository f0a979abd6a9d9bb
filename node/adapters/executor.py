"""What the job executors (Docker, script) share besides their port (``JobSpec``,
``ResourceLimits``, ``JobHandle``, ...: :mod:`dgpu.node.ports.execution`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from dgpu.node.errors import JobSpecInvalid
from dgpu.node.ports.execution import ExitReason

__all__ = ["copy_inputs", "copy_outputs", "split_lines", "wait_enforcing"]


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


def copy_inputs(inputs: Mapping[str, Path], dest: Path) -> None:
    """Copy each input to ``dest/rel``: folders 0755, files 0444, whatever the umask (the job's
    uid reads them; the folder above ``dest`` keeps everyone else out). Blocking."""
    dest.mkdir()
    dest.chmod(0o755)
    for rel, source in inputs.items():
        if not source.is_file():
            raise JobSpecInvalid(f"input {rel!r}: {source} is not a readable file")
        target = dest / rel
        for parent in reversed(target.relative_to(dest).parents[:-1]):
            folder = dest / parent
            if not folder.is_dir():
                folder.mkdir()
                folder.chmod(0o755)
        shutil.copyfile(source, target)
        target.chmod(0o444)


async def wait_enforcing(
    wait_exit: Callable[[], Awaitable[object]],
    *,
    deadline: float,
    grace_s: float,
    disk_full: Callable[[], Awaitable[None]],
    stop: Callable[[ExitReason, float], Awaitable[None]],
) -> None:
    """Wait until the job's process has exited, enforcing two limits on the way: at
    ``deadline`` (trio clock) ``stop(TIMEOUT, grace_s)``; once ``disk_full`` returns (the job
    filled the space it may write) ``stop(OUTPUT_LIMIT, 0)``. ``stop`` records the first
    reason it is given and kills the job."""
    async with trio.open_nursery() as nursery:

        async def guard_disk() -> None:
            await disk_full()
            await stop(ExitReason.OUTPUT_LIMIT, 0.0)

        nursery.start_soon(guard_disk)
        with trio.move_on_at(deadline) as scope:
            await wait_exit()
        if scope.cancelled_caught:
            await stop(ExitReason.TIMEOUT, grace_s)
            await wait_exit()
        nursery.cancel_scope.cancel()


def copy_outputs(src: Path, dest: Path, max_bytes: int) -> list[Path]:
    """Copy regular files (no symlinks, no devices) up to ``max_bytes`` in total."""
    copied: list[Path] = []
    if not src.is_dir():
        return copied
    total = 0
    dest.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(src, followlinks=False):
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            if total + size > max_bytes:
                return copied
            total += size
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target, follow_symlinks=False)
            copied.append(target)
    return copied
