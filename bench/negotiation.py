"""Negotiation latency without the ledger, beside bare py-libp2p's two round trips, in one run.

``bench/network.py`` times negotiations against real providers paying on the development
ledger: there, the renter's escrow ``open`` and the provider's escrow read (and its reclaim of
unused agreements) are HTTP calls that dominate. This bench times what dGPU itself adds: a
provider process serves ``/dgpu/negotiate/1.0.0`` with the real ``ProviderNegotiator`` (real
policy, inventory, signatures, state machine) whose escrow check is an accept-all stand-in, and
the renter runs the real ``negotiate`` with a funder that opens nothing. Request → Quote,
Accept → Agreement: two round trips, each message sealed and opened. Interleaved with it, on
the same two hosts and connection, the bare py-libp2p baseline: a fresh stream, two ~1 KiB
request/response round trips, no signatures, no schema (so load on a shared machine hits both).

    .venv/bin/python bench/negotiation.py [--rounds 50] [--profile]

It prints JSON (p50/p99 of both, and their ratio); ``--profile`` adds the renter side's top
functions by cumulative time. The child role (``--child``) is started by the script itself.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from _common import echo_exchange, summary, wait_file
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from dgpu.node.adapters.p2p import P2PConfig, open_node
from dgpu.node.ports.gpu import simulated_gpus
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.negotiation import AgreementStore, ProviderNegotiator, ProviderPolicy, negotiate
from dgpu.protocol.ids import MAX_FRAME_BYTES, NEGOTIATE_PROTOCOL
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import AgreementTerms, EscrowRef, Executor, GpuSpec, Offer, Quote

PAYLOAD = 1024
ECHO = "/bench/echo/1.0.0"
MINT = SigningKey(b"\x07" * 32).public_key.wallet
GPUS = (GpuSpec(model="RTX 4090", vram_mib=24_576, count=64, simulated=True),)


def _offer(key: SigningKey) -> Offer:
    now = int(time.time())
    return Offer(provider=key.public_key.wallet, gpus=GPUS, price_per_minute=100, mint=MINT, ledger="bench",
                 executors=(Executor.SCRIPT,), seq=1, issued_at=now, expires_at=now + 3600)


class _AcceptAll:
    """The provider's escrow check, stood in for: this bench leaves the ledger out on purpose."""

    async def verify(self, escrow: EscrowRef, terms: AgreementTerms) -> bool:
        del escrow, terms
        return True


class _NoFunds:
    """The renter's funder, stood in for: names an escrow reference, opens nothing."""

    async def fund(self, quote: Quote) -> EscrowRef:
        return EscrowRef(ledger="bench", address="BENCH-NO-ESCROW", rental_id=quote.max_minutes)


class _OneOffer:
    def __init__(self, offer: Offer) -> None:
        self.offer, self.paused, self.executors = offer, False, offer.executors

    def offer_for_seq(self, seq: int) -> Offer | None:
        return self.offer if seq == self.offer.seq else None


async def _provider(workdir: Path, seed: bytes) -> None:
    key = SigningKey(seed)
    offer = _offer(key)
    inventory = Inventory(simulated_gpus(GPUS, owner=key.public_key.wallet), owner=key.public_key.wallet,
                          price_per_gpu_minute=100, max_jobs=64, clock=lambda: int(time.time()))
    negotiator = ProviderNegotiator(key, ProviderPolicy(executors=(Executor.SCRIPT,)), offers=_OneOffer(offer),
                                    inventory=inventory, verifier=_AcceptAll(), agreements=AgreementStore(),
                                    clock=lambda: int(time.time()), nonce=lambda: secrets.token_bytes(16))
    async def echo(stream: Any) -> None:  # the bare baseline: raw py-libp2p stream, no dGPU code
        try:
            for _ in range(2):
                got = b""
                while len(got) < PAYLOAD:
                    got += await stream.read(PAYLOAD - len(got))
                await stream.write(got)
        finally:
            await stream.close()

    async with open_node(key, P2PConfig(gossip=None)) as node:
        node.set_handler(NEGOTIATE_PROTOCOL, negotiator.handle, max_frame_bytes=MAX_FRAME_BYTES,
                         read_timeout_s=10.0, handler_timeout_s=60.0)
        node.host.set_stream_handler(TProtocol(ECHO), echo)
        (workdir / "provider.addr").write_text(node.multiaddr)
        await trio.sleep_forever()


async def _bare_round(node: Any, peer: str) -> float:
    t0 = time.perf_counter()
    stream = await node.host.new_stream(ID.from_base58(peer), [TProtocol(ECHO)])
    await echo_exchange(stream, PAYLOAD)
    await stream.close()
    return (time.perf_counter() - t0) * 1000


async def _rounds(addr: str, seed: bytes, rounds: int, profile: cProfile.Profile | None
                  ) -> tuple[list[float], list[float]]:
    provider = SigningKey(seed)
    offer = _offer(provider)
    renter = SigningKey(secrets.token_bytes(32))
    job = {"executor": Executor.SCRIPT, "script": "true", "max_minutes": 1, "gpu_count": 1,
           "max_price_per_minute": 10**6}
    times: list[float] = []
    bare: list[float] = []
    async with open_node(renter, P2PConfig(gossip=None)) as node:
        peer = await node.connect(addr)
        for i in range(rounds + 1):
            bare_ms = await _bare_round(node, peer)
            if profile is not None and i:
                profile.enable()
            t0 = time.perf_counter()
            await negotiate(node, renter, offer, job, escrow=_NoFunds(), clock=lambda: int(time.time()),
                            nonce=lambda: secrets.token_bytes(16))
            elapsed = (time.perf_counter() - t0) * 1000
            if profile is not None:
                profile.disable()
            if i:  # the first one warms up
                times.append(elapsed)
                bare.append(bare_ms)
    return times, bare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50, help="at most 64 (the provider's GPUs)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--child", type=Path, default=None)
    ap.add_argument("--seed", default=None)
    args = ap.parse_args()
    if args.child is not None:
        trio.run(_provider, args.child, bytes.fromhex(args.seed))
        return
    rounds = min(args.rounds, 63)
    seed = secrets.token_bytes(32)
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-neg-bench-"))
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(workdir), "--seed", seed.hex()],
                            stdin=subprocess.DEVNULL)
    out: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    try:
        addr = wait_file(workdir / "provider.addr", 60)
        profile = cProfile.Profile() if args.profile else None
        times, bare = trio.run(_rounds, addr, seed, rounds, profile)
        out["dgpu_negotiation"] = {"rounds": rounds, **summary(times)}
        out["bare_two_round_trips"] = summary(bare)
        if profile is not None:
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(25)
            out["profile"] = text.getvalue().splitlines()[:60]
    finally:
        proc.kill()
        proc.wait()
    out["ratio_p50"] = round(out["dgpu_negotiation"]["median_ms"] / out["bare_two_round_trips"]["median_ms"], 2)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
