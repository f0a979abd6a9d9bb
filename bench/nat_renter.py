"""One paid rental, measured: the renter side of ``bench/nat.py`` and of tests/integration/nat.

Runs a renter node (``dgpu.client``) joined through ``--bootstrap``, funds it from the
development ledger's faucet, rents the cheapest offer for a script that logs a few lines and
leaves a ``--result-bytes`` output file, follows the logs, downloads the result, and prints one
JSON object: the job's outcome and escrow, the path the rental used (``direct``, ``relay``,
``hole-punched``), and timings (negotiation, first log, download throughput).

Usage: python bench/nat_renter.py --bootstrap MULTIADDR --ledger-url URL [--result-bytes N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from dgpu.client import Client
from dgpu.client.errors import ClientError
from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.node.app import NodeRuntime, run_node
from dgpu.node.config import NodeConfig
from dgpu.protocol.messages import LogChunk

SCRIPT = """echo started
mkdir -p "$HOME/outputs"
head -c {n} /dev/urandom > "$HOME/outputs/blob.bin"
sha256sum "$HOME/outputs/blob.bin" | cut -d' ' -f1
for i in 1 2 3; do echo "tick $i"; sleep {tick}; done
echo done
"""


async def rent(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dgpu-nat-renter-") as tmp:
        # a renter node of our own (Client.connect listens on 127.0.0.1 only: a hole punch needs
        # an address the other side can reach)
        config = NodeConfig(role="renter", bootstrap=tuple(args.bootstrap), data_dir=Path(tmp),
                            accept_simulated=True, listen_host=args.listen_host)
        async with trio.open_nursery() as nursery:
            runtime: NodeRuntime = await nursery.start(run_node, config)
            ledger = DevLedgerEscrow(args.ledger_url, runtime.key)
            try:
                await ledger.faucet(1_000_000)
                await _rent(Client(runtime, ledger), args, Path(tmp), out)
            finally:
                await ledger.aclose()
                nursery.cancel_scope.cancel()
    return out


async def _rent(client: Client, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    offers = await client.find_offers(wait_s=args.wait)
    out["offers"] = len(offers)
    if not offers:
        out["state"] = "no_offers"
        return
    offer = offers[0]
    out["offer_addrs"] = list(offer.offer.addrs)
    node = client.runtime.node
    t0 = time.perf_counter()
    rental = await client.rent(offer, script=SCRIPT.format(n=args.result_bytes, tick=args.tick),
                               max_minutes=5)
    out["negotiation_s"] = round(time.perf_counter() - t0, 4)
    out["path"] = node.path_to(rental.provider_peer)
    logs: list[str] = []
    first: list[float] = []
    t_run = time.perf_counter()

    def on_log(chunk: LogChunk) -> None:
        if not first:
            first.append(time.perf_counter() - t_run)
        logs.append(chunk.data)

    try:
        result = await rental.run(on_log=on_log)
    except ClientError as exc:
        out.update(state="failed", error=str(exc), logs="".join(logs))
        escrow = await rental.escrow_state()
        out["escrow"] = _escrow(escrow)
        return
    out.update(state=str(result.state), exit_code=result.exit_code, logs="".join(logs),
               first_log_s=round(first[0], 4) if first else None, paid=result.paid,
               minutes=result.minutes, refunded=result.refunded)
    if result.escrow is not None:
        out["escrow"] = _escrow(result.escrow)
    dest = tmp / "result"
    t_dl = time.perf_counter()
    files = await rental.download_result(dest)
    dl_s = time.perf_counter() - t_dl
    blob = dest / "blob.bin"
    size = blob.stat().st_size if blob.exists() else 0
    out.update(download_bytes=size, download_s=round(dl_s, 4),
               download_mib_s=round(size / dl_s / 2**20, 3) if dl_s > 0 else None,
               result_files=sorted(str(f.relative_to(dest)) for f in files),
               result_sha256=hashlib.sha256(blob.read_bytes()).hexdigest() if size else None,
               path_after=node.path_to(rental.provider_peer))


def _escrow(view: Any) -> dict[str, Any]:
    return {"status": str(view.status), "deposited": view.deposited, "paid": view.paid,
            "fee": view.fee_paid, "refunded": view.refunded, "minutes": view.claimed_minutes,
            "rate": view.rate_per_minute}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", action="append", required=True)
    ap.add_argument("--ledger-url", required=True)
    ap.add_argument("--result-bytes", type=int, default=1 << 20)
    ap.add_argument("--tick", type=float, default=0.5, help="seconds between the job's log lines")
    ap.add_argument("--listen-host", default="127.0.0.1", help="the renter node's listen address")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for an offer")
    args = ap.parse_args()
    result = trio.run(rent, args)
    print(json.dumps(result), flush=True)
    return 0 if result.get("state") == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
