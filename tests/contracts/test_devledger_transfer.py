"""Withdrawals on the development ledger: a signed transfer between wallets, never into a vault."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.contracts.devledger.model import DevLedgerConfig
from dgpu.contracts.devledger.server import ledger_router
from dgpu.contracts.errors import InsufficientFunds, ProgramError
from dgpu.protocol.keys import SigningKey


async def test_transfer_moves_tokens_and_refuses_bad_destinations(tmp_path: Path) -> None:
    app = FastAPI()
    app.include_router(ledger_router(DevLedgerConfig(db_path=tmp_path / "l.sqlite", faucet_interval_s=0)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l") as http:
        alice = DevLedgerEscrow("http://l", SigningKey(b"a" * 32), client=http)
        bob = DevLedgerEscrow("http://l", SigningKey(b"b" * 32), client=http)
        await alice.faucet(1_000)
        tx = await alice.transfer(bob.wallet, 400)
        assert len(tx) == 64
        assert await alice.balance(alice.wallet) == 600 and await bob.balance(bob.wallet) == 400
        with pytest.raises(InsufficientFunds):
            await alice.transfer(bob.wallet, 601)
        with pytest.raises(ProgramError):
            await alice.transfer(alice.wallet, 1)
        receipt = await alice.open(1, bob.wallet, 10, 5, (await alice.now()) + 300)
        with pytest.raises(ProgramError, match="vault"):
            await bob.transfer(receipt.escrow.address, 1)
        assert await alice.balance(alice.wallet) == 550 and await bob.balance(bob.wallet) == 400
        assert (await alice.stats())["supply"] == 1_000
