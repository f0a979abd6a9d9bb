"""What one rental costs on Solana: transactions, lamports, and wall time on the local endpoint.

Runs whole rentals through the real program on the local development endpoint
(``dgpu-local-rpc``, clock standing still and moved by ``dgpu_advanceClock``): open, start, a claim
every ``--claim-every`` minutes of ledger time (the billing service's default is 10), then
``settle_expired`` at expiry by the provider. For each duration it prints one JSON object: the
transactions sent, each party's lamports spent (fees, plus rent the chain still holds), what rent
is still locked afterwards, and the wall time of the rental on the endpoint.

    .venv/bin/python bench/solana_rental.py [--minutes 10 60 480] [--claim-every 10]
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

SOL = 1_000_000_000
RATE = 23_834  # RTX 4090 at the seed's prices, per minute, 6 decimals
#: the program's Renter record (8 + version, bump, renter, last_rental_id, opened)
RENTER_RECORD_BYTES = 8 + 1 + 1 + 32 + 8 + 8


async def rental(info: LocalRpcInfo, minutes: int, claim_every: int) -> dict[str, object]:
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
        await p.start(handle)
        sent, elapsed = 2, 0
        while elapsed + claim_every < minutes:
            await advance_clock(info.url, claim_every * 60)
            elapsed += claim_every
            await p.claim(handle)
            sent += 1
        await advance_clock(info.url, (minutes - elapsed) * 60)
        settled = await p.settle_expired(handle)
        sent += 1
        wall = time.perf_counter() - t0
        after = {"renter": await r.sol_balance(), "provider": await p.sol_balance()}
        left = (await client.get_account_info(Pubkey.from_string(handle.address))).value
        record = (await client.get_minimum_balance_for_rent_exemption(RENTER_RECORD_BYTES)).value
        return {
            "minutes": minutes, "transactions": sent, "signatures": sent,
            "renter_lamports": before["renter"] - after["renter"],
            "of_which_renter_record_rent_once": record,
            "provider_lamports": before["provider"] - after["provider"],
            "escrow_account_left": left is not None,
            "provider_paid_at_settle": settled.paid, "wall_s": round(wall, 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60, 480])
    parser.add_argument("--claim-every", type=int, default=10)
    args = parser.parse_args()
    binary = build()
    with tempfile.TemporaryDirectory() as tmp, \
            LocalRpc(binary, Path(tmp), clock_speed=0, start_time=1_700_000_000) as info:
        for minutes in args.minutes:
            print(json.dumps(trio.run(rental, info, minutes, args.claim_every)))


if __name__ == "__main__":
    main()
