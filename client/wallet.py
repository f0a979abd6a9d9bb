"""The wallet on Solana: the node key is the wallet; balances in SOL and dGPU; the token account.

``dgpu wallet --solana-rpc URL --program-id ID`` uses this directly (no node needed): it reads the
node's key file (passphrase from ``DGPU_KEY_PASSPHRASE`` when the file is encrypted), reads the
mint and its decimals from the chain, and with ``--create-token-account`` creates the wallet's
associated token account for the dGPU mint if it is missing (paid in SOL by the wallet).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from dgpu.contracts.solana_escrow import SolanaEscrow

__all__ = ["LAMPORTS_PER_SOL", "solana_wallet_report"]

LAMPORTS_PER_SOL = 1_000_000_000


async def solana_wallet_report(escrow: SolanaEscrow, *, create_token_account: bool = False) -> dict[str, Any]:
    """Address, SOL (lamports) and dGPU (base units) balances, mint and decimals, token account."""
    mint = await escrow.mint_info()
    token_account = await escrow.ensure_token_account() if create_token_account else None
    lamports = await escrow.sol_balance()
    units = await escrow.balance(escrow.wallet)
    return {
        "address": escrow.wallet, "ledger": "solana", "real_value": True,
        "sol_lamports": lamports, "sol": _plain(Decimal(lamports) / LAMPORTS_PER_SOL),
        "mint": mint.address, "decimals": mint.decimals, "balance": units,
        "dgpu": _plain(Decimal(units).scaleb(-mint.decimals)), "token_account": token_account,
    }


def _plain(amount: Decimal) -> str:
    """``2.5`` rather than ``2.500000``; whole numbers without a point (display only)."""
    return format(amount.normalize(), "f")
