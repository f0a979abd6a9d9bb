"""Benchmark: marketplace queries over HTTP against the node's local API; print JSON.

    .venv/bin/python bench/http_api.py [--offers 10000] [--requests 400] [--clients 4]

Starts the node API (``create_node_api``, served by uvicorn under trio-asyncio, exactly as the
node serves it) in a child process holding an offer book of ``--offers`` offers, then queries
``GET /api/v1/billing/marketplace`` from this process over 127.0.0.1 with a valid token:
sequentially, then from ``--clients`` concurrent clients (threads, one connection each). The
queries rotate through typical filters (none, a GPU model, VRAM + price, region + executor,
sorted by VRAM, a deep page). Reports p50/p99/max latency in ms; the target is p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
from _common import pct

QUERIES: list[dict[str, Any]] = [
    {},
    {"gpu_model": "RTX 4090"},
    {"min_vram_mib": 40_000, "max_price": 20_000},
    {"region": "eu", "executor": "script"},
    {"sort": "-vram", "limit": 100},
    {"offset": 4000, "limit": 50, "include_simulated": True},
]


def serve(offers: int, key_hex: str) -> None:
    """Child: the API over a filled book; prints {"port", "fill_s"} once it accepts connections."""
    import tempfile
    from functools import partial
    from pathlib import Path

    import trio
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dgpu.bootstrap.auth import TokenIssuer
    from dgpu.bootstrap.config import BootstrapHttpConfig
    from dgpu.bootstrap.http_app import create_app
    from dgpu.node.adapters.http_api import ApiContext, create_node_api
    from dgpu.node.adapters.http_server import serve_http
    from dgpu.node.metrics import NodeMetrics
    from dgpu.node.services import api as svc
    from dgpu.node.services.offers import OfferBook
    from dgpu.protocol.keys import SigningKey
    from dgpu.protocol.messages import Executor, GpuSpec, Offer

    boot = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key_hex))
    node_key = SigningKey(b"\x01" * 32)
    mint = SigningKey(b"\x07" * 32).public_key.wallet
    models = [("RTX 4090", 24_576), ("RTX 4080", 16_384), ("A100", 81_920), ("H100", 81_920), ("L40S", 49_152)]
    regions = ["eu", "us", "ap", "local"]
    now = int(time.time())
    book = OfferBook(capacity=offers + 1)
    t0 = time.perf_counter()
    for i in range(offers):
        model, vram = models[i % len(models)]
        offer = Offer(provider=SigningKey(i.to_bytes(4, "big") + b"\x02" * 28).public_key.wallet,
                      gpus=(GpuSpec(model=model, vram_mib=vram, count=1 + i % 4, simulated=i % 10 == 0),),
                      price_per_minute=1_000 + (i * 7919) % 40_000, mint=mint, ledger="dev",
                      region=regions[i % len(regions)],
                      executors=(Executor.SCRIPT,) if i % 3 == 0 else (Executor.DOCKER,),
                      seq=1, issued_at=now, expires_at=now + 3600)
        book.put(offer, f"peer-{i}", now=now)
    fill_s = time.perf_counter() - t0

    class Idle:
        async def run(self, spec: svc.JobSpec, job: svc.ApiJob) -> svc.JobFinal:
            raise svc.JobRunError("the benchmark runs no jobs")

    issuer = TokenIssuer(boot, "dgpu-bootstrap", "dgpu", 3600)
    jobs = svc.JobManager(Idle(), max_active=1, max_records=10, log_lines=10, clock=lambda: int(time.time()))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            # a real bootstrap: the node asks it whether a token was revoked (once per interval)
            boot_app = create_app(BootstrapHttpConfig(data_dir=Path(tempfile.mkdtemp(prefix="dgpu-bench-"))),
                                  node_key=boot)
            boot_port = await nursery.start(serve_http, boot_app, "127.0.0.1", 0)
            settings = svc.ApiSettings(bootstrap_url=f"http://127.0.0.1:{boot_port}")
            ctx = ApiContext(settings=settings, owner=node_key.public_key.wallet, key=node_key, book=book,
                             verifier=issuer.verifier(), jobs=jobs,
                             wallet=svc.WalletService(None, node_key.public_key.wallet), metrics=NodeMetrics())
            await nursery.start(jobs.run)
            port = await nursery.start(partial(serve_http, create_node_api(ctx), "127.0.0.1", 0))
            print(json.dumps({"port": port, "fill_s": round(fill_s, 2), "book": len(book)}), flush=True)

    trio.run(main)


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 2), "p99_ms": round(pct(ms, 0.99), 2),
            "max_ms": round(max(ms), 2), "mean_ms": round(statistics.fmean(ms), 2)}


def run_client(base: str, token: str, n: int, start: int, out: list[float],  # noqa: PLR0917
               sizes: list[int]) -> None:
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=30) as c:
        for i in range(n):
            q = QUERIES[(start + i) % len(QUERIES)]
            t0 = time.perf_counter()
            r = c.get("/api/v1/billing/marketplace", params=q)
            out.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            sizes.append(len(r.content))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offers", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=400, help="per phase")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--key", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.offers, args.key)
        return

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dgpu.bootstrap.auth import TokenIssuer
    from dgpu.protocol.auth import Role
    from dgpu.protocol.keys import SigningKey

    key_hex = secrets.token_hex(32)
    boot = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key_hex))
    owner = SigningKey(b"\x01" * 32).public_key.wallet
    token = TokenIssuer(boot, "dgpu-bootstrap", "dgpu", 3600).issue(owner, Role.RENTER, "bench", time.time())[0]
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--offers", str(args.offers), "--key", key_hex],
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        base = f"http://127.0.0.1:{info['port']}"
        warm: list[float] = []
        run_client(base, token, 30, 0, warm, [])
        seq: list[float] = []
        sizes: list[int] = []
        run_client(base, token, args.requests, 0, seq, sizes)
        conc: list[float] = []
        per = args.requests // args.clients
        threads = [threading.Thread(target=run_client, args=(base, token, per, k, conc, []))
                   for k in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        result = {
            "offers": info["book"], "fill_s": info["fill_s"], "queries": QUERIES,
            "sequential": summary(seq), "mean_response_bytes": int(statistics.fmean(sizes)),
            "concurrent": {**summary(conc), "clients": args.clients,
                           "throughput_rps": round(len(conc) / wall, 1)},
            "target_p99_ms": 20,
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
    finally:
        child.terminate()
        child.wait(timeout=15)


if __name__ == "__main__":
    main()
