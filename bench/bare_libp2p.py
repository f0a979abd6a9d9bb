"""Bare py-libp2p baseline for ``bench/network.py``: the same measurements without dGPU.

- ``gossip``: N OS processes on 127.0.0.1, each a plain py-libp2p 0.8.1 host with GossipSub
  (meshsub/1.1, heartbeat 1 s, degree 6/4/12: dGPU's gossip settings) and no validator, each
  dialling up to 8 earlier nodes. Offers are replaced by ~1 KiB payloads carrying the
  publication time; propagation = last node's receipt minus that time. Also idle RSS and the
  CPU seconds the nodes spend per publication.
- ``rtt``: two processes; the client opens a stream and does two request/response round trips
  of ~1 KiB frames (what a negotiation does: JobRequest → Quote, Accept → Agreement), timed
  after a warm-up; no signatures, no schema.

    .venv/bin/python bench/bare_libp2p.py [--sizes 10 30] [--publishes 20] [--rounds 30]

Both run with the yamux settings dGPU nodes use (``YAMUX_SETTINGS`` in ``dgpu.node.adapters.p2p``),
so that the comparison is like for like; ``--yamux-defaults`` keeps py-libp2p's own.

The child roles (``--child gossip|echo``) are started by the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import multiaddr
import psutil
import trio
from _common import cpu_seconds, echo_exchange, summary, trigger_publications, wait_file

PAYLOAD = 1024
TOPIC = "bench/bare/1"
ECHO = "/bench/echo/1.0.0"

#: ``YAMUX_SETTINGS`` of ``dgpu.node.adapters.p2p``, copied: a bare node imports nothing of dGPU
#: (``bench/network.py --baseline`` checks that the two agree)
DGPU_YAMUX_SETTINGS = {"PY_YAMUX_RELEASE_ON_READ": "0"}


# -- children -------------------------------------------------------------------------------------

def _host() -> Any:
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.network.config import ConnectionConfig

    return new_host(key_pair=create_new_key_pair(),
                    connection_config=ConnectionConfig(max_connections_per_peer=1))


async def _child_gossip(workdir: Path, index: int) -> None:
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    host = _host()
    router = GossipSub(protocols=[PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1,
                       heartbeat_initial_delay=0.1, time_to_live=30, gossip_window=3, gossip_history=5,
                       adaptive_gossip_enabled=False)
    pubsub = Pubsub(host, router, strict_signing=True)
    received: list[tuple[str, int]] = []
    out = workdir / f"g{index}.json"
    async with (host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]), trio.open_nursery() as nursery,
                background_trio_service(pubsub), background_trio_service(router)):
        await pubsub.wait_until_ready()
        sub = await pubsub.subscribe(TOPIC)
        addr = f"{host.get_addrs()[0]}"
        (workdir / f"g{index}.addr").write_text(addr)
        earlier = [workdir / f"g{i}.addr" for i in range(index)]
        for path in random.Random(index).sample(earlier, min(8, len(earlier))):
            try:
                await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(path.read_text())))
            except Exception as exc:  # a benchmark: count it, keep going
                print(f"dial failed: {exc}", file=sys.stderr)

        async def publish_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGUSR1) as signals:
                async for _ in signals:
                    sent = time.time_ns() // 1_000_000
                    body = json.dumps({"from": index, "ms": sent}).encode().ljust(PAYLOAD)
                    await pubsub.publish(TOPIC, body)

        async def write_out() -> None:
            while True:
                out.write_text(json.dumps(received))
                await trio.sleep(0.5)

        nursery.start_soon(publish_on_signal)
        nursery.start_soon(write_out)
        while True:
            msg = await sub.get()
            head = json.loads(msg.data.rstrip())
            received.append((f"{head['from']}:{head['ms']}", time.time_ns() // 1_000_000))


async def _child_echo(workdir: Path) -> None:
    host = _host()

    async def echo(stream: Any) -> None:
        try:
            for _ in range(2):
                data = await stream.read(PAYLOAD)
                await stream.write(data)
        finally:
            await stream.close()

    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        host.set_stream_handler(ECHO, echo)
        (workdir / "echo.addr").write_text(str(host.get_addrs()[0]))
        await trio.sleep_forever()


# -- the driver -----------------------------------------------------------------------------------

def _spawn(workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (workdir / f"{'-'.join(args)}.log").open("wb")
    try:
        return subprocess.Popen([sys.executable, __file__, "--child", *args, "--workdir", str(workdir)],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def gossip(n: int, publishes: int, gap_s: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bare-gossip-{n}-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):  # one at a time: each dials earlier nodes
            procs.append(_spawn(workdir, "gossip", str(i)))
            wait_file(workdir / f"g{i}.addr", 60 + 2 * n)
        time.sleep(5)  # mesh heartbeats settle
        rss = [psutil.Process(p.pid).memory_info().rss / 2**20 for p in procs]
        cpu0 = cpu_seconds(p.pid for p in procs)
        start_ms = time.time_ns() // 1_000_000
        trigger_publications(procs, publishes, gap_s)
        end = time.monotonic() + 20
        while True:
            time.sleep(1)
            seen: dict[str, list[int]] = {}
            for i in range(n):
                try:
                    rows = json.loads((workdir / f"g{i}.json").read_text())
                except (OSError, ValueError):
                    rows = []
                for key, recv in rows:
                    if int(key.split(":")[1]) >= start_ms:
                        seen.setdefault(key, []).append(recv)
            # the publisher does not deliver its own message to itself: n - 1 receivers
            if (len(seen) >= publishes and all(len(v) >= n - 1 for v in seen.values())) or time.monotonic() > end:
                break
        cpu = cpu_seconds(p.pid for p in procs) - cpu0
        lat = [max(v) - int(k.split(":")[1]) for k, v in seen.items() if len(v) >= n - 1]
        return {"messages": len(seen), "reached_all": len(lat),
                **(summary([float(x) for x in lat]) if lat else {}),
                "cpu_s_per_publish": round(cpu / max(1, publishes), 3),
                "idle_rss": {"median_mb": round(statistics.median(rss), 1), "max_mb": round(max(rss), 1)}}
    finally:
        _stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)


async def _rtt_rounds(addr: str, rounds: int) -> list[float]:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    host = _host()
    times: list[float] = []
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await host.connect(info)
        for i in range(rounds + 1):
            t0 = time.perf_counter()
            stream = await host.new_stream(info.peer_id, [TProtocol(ECHO)])
            await echo_exchange(stream, PAYLOAD)
            await stream.close()
            if i:  # the first one warms up
                times.append((time.perf_counter() - t0) * 1000)
    return times


def rtt(rounds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bare-rtt-"))
    proc = _spawn(workdir, "echo")
    try:
        addr = wait_file(workdir / "echo.addr", 60)
        times = trio.run(_rtt_rounds, addr, rounds)
        return {"rounds": rounds, "two_round_trips": summary(times)}
    finally:
        _stop([proc])
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[10, 30], help="gossip sizes (none: RTT only)")
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--gap", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--child", nargs="+", default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--yamux-defaults", action="store_true",
                    help="py-libp2p's own yamux settings, not the ones dGPU nodes run with")
    args = ap.parse_args()
    if not args.yamux_defaults:  # children inherit it
        os.environ.update(DGPU_YAMUX_SETTINGS)
    if args.child is not None:
        assert args.workdir is not None
        if args.child[0] == "gossip":
            trio.run(_child_gossip, args.workdir, int(args.child[1]))
        else:
            trio.run(_child_echo, args.workdir)
        return
    out: dict[str, Any] = {"cpus": psutil.cpu_count(), "loadavg_before": os.getloadavg(),
                           "yamux": {k: os.environ.get(k) for k in DGPU_YAMUX_SETTINGS},
                           "negotiation_like_rtt": rtt(args.rounds), "gossip": {}}
    for n in args.sizes:
        out["gossip"][str(n)] = gossip(n, args.publishes, args.gap)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
