"""Small files other processes read (a node's multiaddr, a server's URL, a status snapshot)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_addr_file"]


def write_addr_file(path: Path, addr: str) -> None:
    """Write atomically (tmp + rename) so a reader never sees half an address."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(addr + "\n")
    os.replace(tmp, path)
