"""Which local files a job may ship: only those under the folders the node's owner configured.

A token for the node's API is not the right to read every file the node can read. Each input is
resolved (symlinks included) and must then lie under one of the input roots, also resolved, so a
link inside a root that points outside it is refused like the outside path itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import RenterError

__all__ = ["InputRefused", "resolve_input", "resolve_roots"]


class InputRefused(RenterError):
    """A job input lies outside the configured input roots (or is not a readable file)."""

    code = "input_refused"


def resolve_roots(roots: Iterable[Path | str]) -> tuple[Path, ...]:
    """The roots as absolute, symlink-free paths."""
    return tuple(Path(os.path.realpath(Path(root).expanduser())) for root in roots)


def resolve_input(local: Path | str, roots: tuple[Path, ...]) -> Path:
    """``local`` resolved, if it is a regular file under one of ``roots`` (already resolved)."""
    real = Path(os.path.realpath(Path(local).expanduser()))
    if not any(real == root or real.is_relative_to(root) for root in roots):
        where = ", ".join(str(r) for r in roots) or "none configured"
        raise InputRefused(f"input {local} is outside the input roots ({where}); start the node with "
                           "--input-root DIR to allow a folder")
    if not real.is_file():
        raise InputRefused(f"input {local} is not a regular file")
    return real
