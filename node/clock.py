"""The node's wall clock and nonce source: the only place its services' time and randomness
come from (services take them as arguments, so tests pass fixed ones)."""

from __future__ import annotations

import secrets
import time

__all__ = ["new_nonce", "wall_clock", "wall_clock_ms"]


def wall_clock() -> int:
    return int(time.time())


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def new_nonce() -> bytes:
    return secrets.token_bytes(16)
