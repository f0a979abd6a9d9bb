"""Billing benchmark: ledger transactions per rental, and development-ledger operations per second.

Prints one JSON object. Run: ``.venv/bin/python bench/billing.py [--ops 200] [--clients 8]``.

1. Transactions per rental (counted from the ledger's own journal, not computed): a rental of
   10 min, 1 h, 8 h and 24 h on the development ledger, whose clock is stepped forward by its
   test-mode control (an accelerated clock). "escrow": open, start, one claim per 10-minute claim
   interval while the rental runs, close at the end (which pays the last interval). "naive": the
   same rental paid by one transfer per minute (modelled as a claim every minute: one ledger
   transaction per minute, plus open/start/close). Requests are signed envelopes applied by
   ``DevLedger.submit`` in-process (signature, replay and the rules all run; no HTTP).
2. Operations per second: signed ``open`` requests over real HTTP (uvicorn on 127.0.0.1 via
   ``serve_http``, SQLite file), sequential from one client and concurrent from N clients.
   A figure for this machine only; it varies with load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from fastapi import FastAPI

from dgpu.contracts.devledger import DevLedger, DevLedgerConfig, DevLedgerEscrow, ledger_router
from dgpu.contracts.devledger.messages import (
    ClaimRequest,
    CloseRequest,
    FaucetRequest,
    OpenRequest,
    StartRequest,
)
from dgpu.contracts.devledger.model import escrow_address
from dgpu.node.adapters.http_server import serve_http
from dgpu.protocol.envelope import seal
from dgpu.protocol.keys import SigningKey

T0 = 1_700_000_000
RATE = 23_834
DURATIONS = {"10min": 10, "1h": 60, "8h": 480, "24h": 1440}
CLAIM_INTERVAL_MIN = 10


def _submit(ledger: DevLedger, key: SigningKey, message: Any) -> None:
    now = int(time.time())
    ledger.submit(seal(message, key, nonce=os.urandom(16), issued_at=now, expires_at=now + 60))


def transactions_per_rental(tmp: Path) -> dict[str, Any]:
    renter, provider = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)
    ledger = DevLedger(DevLedgerConfig(db_path=tmp / "count.sqlite3", test_mode=True, ledger_id="bench",
                                       faucet_max=10**15, faucet_interval_s=0))
    _submit(ledger, renter, FaucetRequest(ledger="bench", amount=10**14))
    results: dict[str, Any] = {}
    rental_id = 0
    try:
        for label, minutes in DURATIONS.items():
            row: dict[str, int] = {}
            for scheme, interval in (("escrow", CLAIM_INTERVAL_MIN), ("naive_per_minute", 1)):
                rental_id += 1
                before = sum(ledger.stats()["transactions"].values())
                ledger.set_time(T0)
                _submit(ledger, renter, OpenRequest(ledger="bench", provider=provider.public_key.wallet,
                                                    rental_id=rental_id, rate_per_minute=RATE, max_minutes=minutes,
                                                    start_deadline=T0 + 300))
                address = escrow_address(renter.public_key.wallet, provider.public_key.wallet, rental_id)
                _submit(ledger, provider, StartRequest(ledger="bench", escrow=address))
                for minute in range(interval, minutes, interval):
                    ledger.set_time(T0 + 60 * minute)
                    _submit(ledger, provider, ClaimRequest(ledger="bench", escrow=address))
                ledger.set_time(T0 + 60 * minutes)
                _submit(ledger, provider, CloseRequest(ledger="bench", escrow=address))
                e, vault, _ = ledger.escrow(address)
                assert e.paid + e.fee_paid == RATE * minutes and vault == 0
                row[scheme] = sum(ledger.stats()["transactions"].values()) - before
            results[label] = {"minutes": minutes, **row}
        ledger.audit()
    finally:
        ledger.close()
    return results


async def ops_per_second(tmp: Path, ops: int, clients: int) -> dict[str, Any]:
    config = DevLedgerConfig(db_path=tmp / "ops.sqlite3", faucet_max=10**12, faucet_interval_s=0)
    ledger = DevLedger(config)
    app = FastAPI()
    app.include_router(ledger_router(config, ledger=ledger))
    keys = [SigningKey(bytes([10 + i]) * 32) for i in range(clients)]
    provider = SigningKey(b"\x02" * 32).public_key.wallet
    out: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, app, "127.0.0.1", 0)
            base = f"http://127.0.0.1:{port}"
            limits = httpx.Limits(max_connections=clients * 2)
            async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
                escrows = [DevLedgerEscrow(base, k, client=http) for k in keys]
                for e in escrows:
                    await e.faucet(10**11)
                deadline = await escrows[0].now() + 3600

                async def run(client: DevLedgerEscrow, first_id: int, count: int) -> None:
                    for i in range(count):
                        await client.open(first_id + i, provider, RATE, 10, deadline)

                start = time.perf_counter()
                await run(escrows[0], 0, ops)
                sequential = time.perf_counter() - start
                per_client = max(ops // clients, 1)
                start = time.perf_counter()
                async with trio.open_nursery() as workers:
                    for n, client in enumerate(escrows):
                        workers.start_soon(run, client, 1_000_000 * (n + 1), per_client)
                concurrent = time.perf_counter() - start
                out = {
                    "request": "signed open over HTTP (envelope verify + replay check + SQLite transaction)",
                    "sequential": {"requests": ops, "seconds": round(sequential, 3),
                                   "ops_per_s": round(ops / sequential, 1)},
                    "concurrent": {"clients": clients, "requests": per_client * clients,
                                   "seconds": round(concurrent, 3),
                                   "ops_per_s": round(per_client * clients / concurrent, 1)},
                }
            nursery.cancel_scope.cancel()
        ledger.audit()
    finally:
        ledger.close()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        counts = transactions_per_rental(Path(tmp))
        throughput = trio.run(ops_per_second, Path(tmp), args.ops, args.clients)
    print(json.dumps({
        "ledger": "development (no real value)",
        "claim_interval_minutes": CLAIM_INTERVAL_MIN,
        "transactions_per_rental": counts,
        "dev_ledger_ops": throughput,
        "cpus": os.cpu_count(),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
