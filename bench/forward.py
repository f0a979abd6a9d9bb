"""Forwarded-port figures, printed as JSON: throughput and the latency a forward adds per request.

A local network (bootstrap + one provider allowing forwards, OS processes on 127.0.0.1) runs a
script job serving files with busybox ``httpd`` on 127.0.0.1:8080 inside the job; the renter
(this process) reaches it through ``forward=["0:8080"]``. For comparison the same ``httpd`` serves
the same files on the host, reached directly. Measured:

- throughput: one HTTP/1.0 GET of a ``--mib`` MiB file, forwarded vs direct (MiB/s);
- per-request latency: ``--requests`` sequential GETs of a small page, each on a new TCP
  connection (connect + request + response), forwarded vs direct (median / p90 ms); the
  difference is what the forward adds (a libp2p stream, the provider's connect in the job's
  namespace, the relay both ways).

Usage: .venv/bin/python bench/forward.py [--mib 64] [--requests 50]   (root: script sandboxes)
The provider's rate bound is raised for the bench (``--access-limits``); its default is 16 MiB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio
from _common import pct

from dgpu.client import Client
from dgpu.client.demo import DemoNetwork
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.services.forward_client import ForwardInfo


async def get(port: int, path: str) -> int:
    """One HTTP/1.0 GET on a fresh connection; the bytes received (headers included)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        total = 0
        while chunk := await stream.receive_some(1 << 20):
            total += len(chunk)
        return total


async def measure(port: int, mib: int, requests: int) -> dict[str, float]:
    with trio.fail_after(60):  # until the server answers with the whole file
        while True:
            try:
                if await get(port, "/big") >= mib << 20:
                    break
            except trio.BrokenResourceError:  # not up yet: the provider refused, our socket was reset
                pass
            await trio.sleep(0.3)
    t0 = time.perf_counter()
    size = await get(port, "/big")
    seconds = time.perf_counter() - t0
    latencies = []
    for _ in range(requests):
        t0 = time.perf_counter()
        await get(port, "/index.html")
        latencies.append((time.perf_counter() - t0) * 1000)
    return {"throughput_mib_s": round(size / seconds / (1 << 20), 1),
            "latency_ms_median": round(statistics.median(latencies), 2),
            "latency_ms_p90": round(pct(latencies, 0.9), 2)}


def script(mib: int) -> str:
    return (f"mkdir -p www && echo hello > www/index.html && dd if=/dev/zero of=www/big bs=1M count={mib} 2>/dev/null\n"
            "busybox httpd -p 127.0.0.1:8080 -h www\n")


async def run(net: DemoNetwork, mib: int, requests: int, host_www: Path) -> dict[str, object]:
    async with Client.connect([net.addrs["bootstrap"]], ledger_url=net.ledger_url, accept_simulated=True) as client:
        await client.faucet(1_000_000)
        offers = await client.find_offers(wait_s=30)
        rental = await client.rent(offers[0], script=script(mib), max_minutes=10, interactive=True,
                                   forward=["0:8080"])
        forwards: list[ForwardInfo] = []
        ready = trio.Event()
        out: dict[str, object] = {}
        async with trio.open_nursery() as nursery:
            async def follow() -> None:
                result = await rental.run(on_forward=lambda f: (forwards.append(f), ready.set()))
                out["rental"] = f"{result.state}: {result.reason}"

            nursery.start_soon(follow)
            await ready.wait()
            try:
                out["forwarded"] = await measure(forwards[0].local_port, mib, requests)
            finally:
                rental.cancel()
    with trio.socket.socket() as probe:  # a free port for the host's own httpd
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await trio.lowlevel.open_process(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h",
                                               str(host_www)])
    try:
        out["direct"] = await measure(port, mib, requests)
    finally:
        server.kill()
        await server.wait()
    fwd, direct = out["forwarded"], out["direct"]
    assert isinstance(fwd, dict) and isinstance(direct, dict)
    out["added_latency_ms_median"] = round(fwd["latency_ms_median"] - direct["latency_ms_median"], 2)
    out["file_mib"], out["requests"] = mib, requests
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-bench-forward-"))
    os.chmod(workdir, 0o711)
    www = workdir / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    (www / "big").write_bytes(b"\0" * (args.mib << 20))
    net = DemoNetwork(workdir)
    try:
        deadline = time.monotonic() + 60
        net.start_bootstrap(deadline, ledger_speed=1)
        net.start_provider("provider", "RTX 4090:24576:1", 1_000, deadline,
                           extra=["--executor", "script", "--allow-forward", "--access-limits", "64:1073741824:600"])
        print(json.dumps(trio.run(run, net, args.mib, args.requests, www), indent=2))
    finally:
        net.stop()
        remove_tree(workdir)


if __name__ == "__main__":
    main()
