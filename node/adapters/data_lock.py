"""One process per data dir: an exclusive ``fcntl`` lock held for the process's life.

Two nodes on one data dir would share a wallet and a peer id and race on its SQLite store; the
second one exits at once, naming the process that holds the lock. The kernel drops the lock
when the holder dies, so a stale ``lock`` file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dgpu.node.errors import ConfigError

__all__ = ["LOCK_FILE", "hold_data_dir"]

LOCK_FILE = "lock"
#: the lock file holds a PID; anything longer is not ours
_MAX_PID_BYTES = 32


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """Create ``data_dir`` (0700) and lock it; ConfigError when another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, _MAX_PID_BYTES, 0).decode("ascii", "replace").strip() or "unknown"
            raise ConfigError(f"data dir {data_dir} is in use by process {holder}: stop it, or give this "
                              "node its own --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
