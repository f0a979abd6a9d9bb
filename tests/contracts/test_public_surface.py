"""dgpu.contracts exports a small, explicit surface, and both ledgers satisfy the interface."""

from __future__ import annotations

from solana.rpc.async_api import AsyncClient
from solders.keypair import Keypair

from dgpu import contracts
from dgpu.contracts import DevLedgerEscrow, EscrowLedger, SolanaEscrow
from dgpu.protocol.keys import SigningKey


def test_all() -> None:
    assert sorted(contracts.__all__) == [
        "DevLedgerEscrow", "EscrowHandle", "EscrowLedger", "EscrowReceipt", "EscrowView", "MintInfo", "SolanaEscrow",
    ]


def test_both_ledgers_implement_the_interface() -> None:
    dev: EscrowLedger = DevLedgerEscrow("http://127.0.0.1:1", SigningKey(b"\1" * 32))
    sol: EscrowLedger = SolanaEscrow(AsyncClient("http://127.0.0.1:1"), "FwS7dLgPfT2jNmtFXVhesDHXLJhpa1gPLYfxZe5Guu4P",
                                     Keypair())
    assert isinstance(dev, EscrowLedger) and isinstance(sol, EscrowLedger)
    assert (dev.ledger, sol.ledger) == ("development", "solana")
