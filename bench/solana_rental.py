"""What one rental costs on Solana: transactions and lamports per side, and wall time on the local endpoint.

Runs whole rentals through the real program on the local development endpoint
(``dgpu-local-rpc``, clock standing still and moved by ``dgpu_advanceClock``) on the schedule of
the node's billing service (``BillingPolicy``): the renter opens; the provider starts, claims
every ``--claim-every`` minutes of ledger time (the service's default: 10) while the rental runs,
and closes when the job ends (which pays the last interval and refunds nothing here, since the
job used every minute); ``--exit settle_expired`` settles at expiry instead. For each duration it
prints one JSON object:

- ``transactions``: the landed transactions that named the escrow, from the chain
  (getSignaturesForAddress), per side: the renter signs ``open``, the provider the rest;
- ``lamports``: what each side's SOL balance lost: transaction fees (5000 per signature; add
  ``compute_unit_price * compute_unit_limit / 1e6`` per transaction on a cluster with a priority
  fee), plus the rent of the renter's rental-id record, paid once per renter (kept: rental ids
  never revive), and ``escrow_rent_locked``: the rent of the escrow and vault accounts the renter
  lends during the rental, all back at the exit;
- ``settlement``: the rental's money summed from those transactions (``SolanaEscrow.settlement``);
- ``wall_s``: the rental's transactions on this endpoint (no job, no network: see docs/solana.md
  for one whole rental through the nodes).

    .venv/bin/python bench/solana_rental.py [--minutes 10 60 480] [--claim-every 10] [--exit close]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import trio
from solana.rpc.async_api import AsyncClient
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from dgpu.contracts.local_rpc import LocalRpc, LocalRpcInfo, advance_clock, build, fund
from dgpu.contracts.solana_escrow import SolanaEscrow
from dgpu.node.services.billing import BillingPolicy

SOL = 1_000_000_000
RATE = 23_834  # RTX 4090 at the seed's prices, per minute, 6 decimals
#: the program's Renter record (8 + version, bump, renter, last_rental_id, opened)
RENTER_RECORD_BYTES = 8 + 1 + 1 + 32 + 8 + 8
SIGNATURE_FEE = 5_000


async def rental(info: LocalRpcInfo, minutes: int, claim_every: int, exit_with: str) -> dict[str, object]:
    renter, provider = Keypair(), Keypair()
    async with AsyncClient(info.url) as client:
        await fund(client, info, renter, lamports=10 * SOL, tokens=RATE * minutes)
        await fund(client, info, provider, lamports=SOL, tokens=0)  # its token account exists
        r = SolanaEscrow(client, info.program_id, renter, poll_interval_s=0.01)
        p = SolanaEscrow(client, info.program_id, provider, poll_interval_s=0.01)
        before = {"renter": await r.sol_balance(), "provider": await p.sol_balance()}
        t0 = time.perf_counter()
        now = await r.now()
        handle = (await r.open(1, p.wallet, RATE, minutes, now + 300)).escrow
        locked = before["renter"] - await r.sol_balance()
        await p.start(handle)
        elapsed = 0
        while elapsed + claim_every < minutes:
            await advance_clock(info.url, claim_every * 60)
            elapsed += claim_every
            await p.claim(handle)
        await advance_clock(info.url, (minutes - elapsed) * 60)
        await (p.close(handle) if exit_with == "close" else p.settle_expired(handle))
        wall = time.perf_counter() - t0
        after = {"renter": await r.sol_balance(), "provider": await p.sol_balance()}
        escrow = Pubkey.from_string(handle.address)
        signers = {str(renter.pubkey()): "renter", str(provider.pubkey()): "provider"}
        by_side = {"renter": 0, "provider": 0}
        for status in (await client.get_signatures_for_address(escrow, limit=1000)).value:
            tx = (await client.get_transaction(status.signature, max_supported_transaction_version=0)).value
            assert tx is not None
            payer = str(tx.transaction.transaction.message.account_keys[0])  # type: ignore[union-attr]
            by_side[signers[payer]] += 1
        settlement = await r.settlement(handle)
        assert settlement is not None and settlement.charged + settlement.refunded == settlement.deposited
        record = (await client.get_minimum_balance_for_rent_exemption(RENTER_RECORD_BYTES)).value
        renter_lamports = before["renter"] - after["renter"]
        provider_lamports = before["provider"] - after["provider"]
        return {
            "minutes": minutes, "exit": exit_with,
            "transactions": {**by_side, "total": sum(by_side.values())},
            "lamports": {"renter": renter_lamports, "of_which_renter_record_rent_once": record,
                         "renter_fees": renter_lamports - record, "provider": provider_lamports,
                         "total_fees": renter_lamports - record + provider_lamports,
                         "escrow_rent_locked": locked - SIGNATURE_FEE - record},
            "fees_are_signature_fees": renter_lamports - record == SIGNATURE_FEE * by_side["renter"]
                                       and provider_lamports == SIGNATURE_FEE * by_side["provider"],
            "escrow_account_left": (await client.get_account_info(escrow)).value is not None,
            "settlement": {"deposited": settlement.deposited, "paid": settlement.paid, "fee": settlement.fee,
                           "refunded": settlement.refunded},
            "wall_s": round(wall, 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60, 480])
    parser.add_argument("--claim-every", type=int, default=BillingPolicy().claim_interval_s // 60)
    parser.add_argument("--exit", choices=["close", "settle_expired"], default="close")
    args = parser.parse_args()
    binary = build()
    with tempfile.TemporaryDirectory() as tmp, \
            LocalRpc(binary, Path(tmp), clock_speed=0, start_time=1_700_000_000) as info:
        for minutes in args.minutes:
            print(json.dumps(trio.run(rental, info, minutes, args.claim_every, args.exit)), flush=True)


if __name__ == "__main__":
    main()
