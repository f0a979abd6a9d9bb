"""``dgpu node``'s Solana settings from flags and ``DGPU_*`` environment variables.

A flag wins, then the environment variable, then the configuration's default (``NodeConfig``):
the same order as every other setting (``DGPU_DATA_DIR``, the renter commands' ``DGPU_*``).
Values stay text here; ``NodeConfig`` validates and converts them, so a bad ``DGPU_COMMITMENT``
is refused exactly like a bad ``--commitment``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["SOLANA_ENV", "solana_settings"]

#: NodeConfig field -> the environment variable that sets it when its flag is not given
SOLANA_ENV: Final[Mapping[str, str]] = {
    "ledger": "DGPU_LEDGER",
    "solana_rpc": "DGPU_SOLANA_RPC",
    "program_id": "DGPU_PROGRAM_ID",
    "mint": "DGPU_MINT",
    "commitment": "DGPU_COMMITMENT",
    "compute_unit_price": "DGPU_COMPUTE_UNIT_PRICE",
    "compute_unit_limit": "DGPU_COMPUTE_UNIT_LIMIT",
}


def solana_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The NodeConfig keyword arguments of the Solana settings: ``flags[field]`` when not None,
    else a non-empty ``env[SOLANA_ENV[field]]``; a field set by neither is left out (its default)."""
    out: dict[str, Any] = {}
    for field, var in SOLANA_ENV.items():
        if flags.get(field) is not None:
            out[field] = flags[field]
        elif env.get(var):
            out[field] = env[var]
    return out
