"""Where each role keeps its identity and state, found the same way by the node and the CLI.

``--data-dir`` wins, then ``$DGPU_DATA_DIR``, then ``$XDG_DATA_HOME/dgpu/<role>`` (by default
``~/.local/share/dgpu/<role>``): a provider and a renter started from one folder get their own
wallets and peer ids, and the renter commands find their node's token from any folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

__all__ = ["API_FILE", "Role", "default_data_dir", "resolve_data_dir"]

Role = Literal["provider", "renter", "bootstrap"]
#: written by a node serving its local API (``{"url": ...}``): how the renter commands find it
API_FILE = "api.json"


def default_data_dir(role: Role, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("DGPU_DATA_DIR"):
        return Path(env["DGPU_DATA_DIR"]).expanduser().absolute()
    base = Path(env["XDG_DATA_HOME"]).expanduser() if env.get("XDG_DATA_HOME") else Path.home() / ".local/share"
    return (base / "dgpu" / role).absolute()


def resolve_data_dir(flag: Path | str | None, role: Role, env: Mapping[str, str] | None = None) -> Path:
    """The absolute data dir: the flag if given, else :func:`default_data_dir`."""
    if flag:
        return Path(flag).expanduser().absolute()
    return default_data_dir(role, env)
