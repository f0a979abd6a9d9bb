"""``dgpu demo --ledger solana``: the demo's rental paid through the escrow program.

Starts the local development Solana endpoint (``dgpu-local-rpc``: the program next to the real
SPL Token and ATA programs; mint and Config created with real transactions; clock x60), a
bootstrap node and the demo's providers run with ``--ledger solana``, funds them with SOL for
fees, funds a renter (in this process) with SOL and tokens, runs the same rental as ``dgpu demo``
through the program and prints the summary read back from chain accounts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from dgpu.client.demo import _PROVIDERS, DEMO_SCRIPT, LEDGER_SPEED, DemoNetwork

__all__ = ["run_solana_demo"]

SOL = 1_000_000_000
#: building the endpoint is separate; this bounds the network and the rental
DEADLINE_S = 120.0


def run_solana_demo(*, keep: bool = False, log_level: str = "WARNING") -> int:
    """Returns the process exit status (0: the rental finished and the money is conserved)."""
    from dgpu.contracts.local_rpc import LocalRpc, LocalRpcUnavailable, build

    try:
        binary = build()
    except LocalRpcUnavailable as exc:
        print(f"demo failed: {exc}", flush=True)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-demo-solana-"))
    workdir.chmod(0o711)  # a root provider runs script jobs as nobody under it
    net = DemoNetwork(workdir, log_level=log_level)
    start = time.monotonic()
    summary: dict[str, Any] = {"ledger": "solana"}
    ok = False
    try:
        with LocalRpc(binary, workdir / "solana", clock_speed=LEDGER_SPEED) as info:
            print(f"dGPU demo on Solana: local development endpoint {info.url} (program {info.program_id}, "
                  f"mint {info.mint}; no real value; clock x{LEDGER_SPEED})", flush=True)
            summary.update(trio.run(_run, net, info, start + DEADLINE_S))
            ok = summary.get("state") == "finished" and summary.get("conserved") is True
    except (RuntimeError, TimeoutError, OSError, LocalRpcUnavailable) as exc:
        print(f"demo failed: {exc}", flush=True)
    finally:
        codes = net.stop()
        summary["processes"] = codes
        summary["elapsed_s"] = round(time.monotonic() - start, 2)
        print("summary: " + json.dumps(summary, indent=2), flush=True)
        if any(c is None for c in codes.values()):
            ok = False
        if not ok:
            print(f"logs kept in {workdir}", flush=True)
        elif not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


async def _run(net: DemoNetwork, info: Any, deadline: float) -> dict[str, Any]:
    from solana.rpc.async_api import AsyncClient
    from solders.keypair import Keypair
    from solders.pubkey import Pubkey
    from spl.token.instructions import get_associated_token_address

    from dgpu.client.client import Client
    from dgpu.contracts import solana_ix as ix
    from dgpu.contracts.local_rpc import fund
    from dgpu.contracts.solana_audit import audit_escrows
    from dgpu.contracts.solana_escrow import SolanaEscrow
    from dgpu.node.adapters.keystore import create_keystore
    from dgpu.protocol.messages import LogChunk

    def keypair(name: str) -> Keypair:
        key = create_keystore(net.workdir / name / "identity.json")
        (net.workdir / name).chmod(0o711)
        return Keypair.from_bytes(bytes(key.to_solana_keypair()))

    async with AsyncClient(info.url) as rpc:
        async def tokens(owner: Pubkey) -> int:
            resp = await rpc.get_token_account_balance(get_associated_token_address(owner, info.mint))
            return int(resp.value.amount)

        async def lamports(owner: Pubkey) -> int:
            return int((await rpc.get_balance(owner)).value)

        boot = net.start_bootstrap(deadline)
        print(f"  bootstrap  {boot}", flush=True)
        providers: dict[str, Keypair] = {}
        for name, gpu, price in _PROVIDERS:
            providers[name] = keypair(name)
            await fund(rpc, info, providers[name], lamports=SOL, tokens=0)  # SOL for fees; a token account
            addr = net.start_provider(name, gpu, price, deadline, extra=[
                "--executor", "script", "--ledger", "solana", "--solana-rpc", info.url,
                "--program-id", str(info.program_id), "--mint", str(info.mint)])
            print(f"  {name} {addr}  [{gpu}, simulated, {price} base units/GPU-min, wallet "
                  f"{providers[name].pubkey()}]", flush=True)
        renter_kp = keypair("renter")
        await fund(rpc, info, renter_kp, lamports=SOL, tokens=10_000_000)
        ledger = SolanaEscrow(info.url, info.program_id, renter_kp, poll_interval_s=0.1)
        async with Client.connect([net.addrs["bootstrap"]], ledger=ledger, data_dir=net.workdir / "renter",
                                  accept_simulated=True) as client:
            offers = await client.find_offers(min_vram_mib=16000, include_simulated=True, wait_s=30,
                                              min_results=len(_PROVIDERS))
            if not offers:
                return {"state": "no_offers"}
            best = offers[0]
            provider = Pubkey.from_string(best.provider)
            me = renter_kp.pubkey()
            before = {"renter": await tokens(me), "provider": await tokens(provider),
                      "treasury": int((await rpc.get_token_account_balance(info.treasury)).value.amount),
                      "renter_lamports": await lamports(me), "provider_lamports": await lamports(provider),
                      "renter_state_lamports": await lamports(ix.renter_pda(info.program_id, me))}
            t0 = time.monotonic()
            rental = await client.rent(best, script=DEMO_SCRIPT, max_minutes=5, min_vram_mib=16000,
                                       env={"DGPU_DEMO_GPU": best.gpu_model})
            terms = rental.agreement.terms
            print(f"renter: cheapest {best.gpu_model} at {best.price_per_minute}/min; deposit {terms.deposit} "
                  f"locked in escrow {terms.escrow.address} (the program's PDA)", flush=True)

            def show(chunk: LogChunk) -> None:
                for line in chunk.data.splitlines():
                    print(f"  [job {chunk.stream}] {line}", flush=True)

            outcome = await rental.run(on_log=show)
            rental_s = time.monotonic() - t0
            after = {"renter": await tokens(me), "provider": await tokens(provider),
                     "treasury": int((await rpc.get_token_account_balance(info.treasury)).value.amount),
                     "renter_lamports": await lamports(me), "provider_lamports": await lamports(provider),
                     "renter_state_lamports": await lamports(ix.renter_pda(info.program_id, me))}
            audit = await audit_escrows(rpc, info.program_id, settled=[terms.escrow.address])
        await ledger.aclose()
    spent = before["renter"] - after["renter"]
    paid, fee = after["provider"] - before["provider"], after["treasury"] - before["treasury"]
    # the renter's first rental also funds its renter-state account (kept: rental ids are never
    # reused); the escrow's and the vault's rent come back at close
    renter_rent = after["renter_state_lamports"] - before["renter_state_lamports"]
    renter_fees = before["renter_lamports"] - after["renter_lamports"] - renter_rent
    provider_fees = before["provider_lamports"] - after["provider_lamports"]
    return {
        "state": str(outcome.state), "exit_code": outcome.exit_code, "provider": best.provider,
        "gpu": best.gpu_model, "escrow": terms.escrow.address, "rate_per_minute": terms.rate_per_minute,
        "deposited": terms.deposit, "paid_to_provider": paid, "fee": fee, "refunded": terms.deposit - spent,
        "minutes_billed": spent // terms.rate_per_minute,
        # every transaction pays 5000 lamports (one signature), so the fees count the transactions
        "lamports_per_rental": {"renter_fees": renter_fees, "provider_fees": provider_fees,
                                "renter_state_rent_first_rental": renter_rent},
        "transactions_per_rental": (renter_fees + provider_fees) // 5000,
        "escrow_account_closed": terms.escrow.address in audit.gone,
        "audit": {"live_escrows": len(audit.live), "problems": audit.problems},
        "rental_s": round(rental_s, 2), "balances_before": before, "balances_after": after,
        "conserved": spent == paid + fee and audit.conserved and (renter_fees + provider_fees) % 5000 == 0,
    }
