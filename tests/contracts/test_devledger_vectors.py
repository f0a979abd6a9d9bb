"""Every scenario of tests/vectors/escrow.json through the real HTTP dev ledger (uvicorn, SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dgpu.contracts.devledger.model import escrow_address
from dgpu.contracts.errors import EscrowNotFound, EscrowRefused
from dgpu.contracts.escrow_api import EscrowHandle

from .conftest import KEYS, SCENARIOS, Served, ledger_config, served_ledger

WALLETS = {name: key.public_key.wallet for name, key in KEYS.items()}


async def _observe(served: Served, handle: EscrowHandle, treasury: str) -> dict[str, Any]:
    client = served.clients["stranger"]
    balances = {
        "renter": await client.balance(WALLETS["renter"]),
        "provider": await client.balance(WALLETS["provider"]),
        "treasury": await client.balance(treasury),
        "vault": await client.balance(handle.address),
    }
    try:
        view = await client.fetch(handle.address)
    except EscrowNotFound:
        escrow = None
    else:
        escrow = {
            "status": view.status.value, "max_minutes": view.max_minutes, "deposited": view.deposited,
            "claimed_minutes": view.claimed_minutes, "started_at": view.started_at, "paid": view.paid,
            "fee_paid": view.fee_paid, "refunded": view.refunded,
        }
        assert view.vault_balance == balances["vault"]
        assert view.handle == handle
    return {"balances": balances, "escrow": escrow}


async def _run_step(served: Served, handle: EscrowHandle, step: dict[str, Any]) -> str | None:
    client = served.clients[step["by"]]
    action, args = step["action"], step.get("args") or {}
    try:
        if action == "open":
            receipt = await client.open(args["rental_id"], WALLETS["provider"], args["rate_per_minute"],
                                        args["max_minutes"], args["start_deadline"])
            assert receipt.escrow == handle
            assert receipt.deposited == args["rate_per_minute"] * args["max_minutes"]
        elif action == "top_up":
            receipt = await client.top_up(handle, args["extra_minutes"])
        else:
            receipt = await getattr(client, action)(handle)
    except EscrowRefused as exc:
        return exc.code.value
    assert receipt.now == step["at"]
    return None


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
async def test_scenario_over_http(scenario: dict[str, Any], tmp_path: Path) -> None:
    config = ledger_config(tmp_path, fee_bps=scenario["fee_bps"], faucet_max=10**12)
    async with served_ledger(config) as served:
        treasury = (await served.clients["renter"].info())["treasury"]
        for who in ("renter", "provider"):
            if scenario["initial"][who]:
                await served.clients[who].faucet(scenario["initial"][who])
        if scenario["initial"].get("vault"):
            # a stranger sends tokens to the vault's (derivable) address before the rental opens
            first = next(s["args"]["rental_id"] for s in scenario["steps"] if s["action"] == "open")
            dust = scenario["initial"]["vault"]
            await served.clients["stranger"].faucet(dust)
            await served.clients["stranger"].transfer(
                escrow_address(WALLETS["renter"], WALLETS["provider"], first), dust)
        handle: EscrowHandle | None = None
        for index, step in enumerate(scenario["steps"]):
            if step["action"] == "open":
                rental_id = step["args"]["rental_id"]
                handle = EscrowHandle(
                    ledger="development",
                    address=escrow_address(WALLETS["renter"], WALLETS["provider"], rental_id),
                    renter=WALLETS["renter"], provider=WALLETS["provider"], rental_id=rental_id,
                )
            assert handle is not None
            before = await _observe(served, handle, treasury)
            assert await served.clients["stranger"].set_time(step["at"]) == step["at"]
            error = await _run_step(served, handle, step)
            where = f"{scenario['name']} step {index} ({step['by']} {step['action']})"
            assert error == step["expect"]["error"], where
            after = await _observe(served, handle, treasury)
            expected = {"balances": step["expect"]["balances"], "escrow": step["expect"]["escrow"]}
            assert after == expected, where
            if error is not None:
                assert after == before, f"{where}: a refused step changed something"
            stats = await served.clients["stranger"].stats()
            assert stats["supply"] == stats["total_balances"], where
            served.ledger.audit()
