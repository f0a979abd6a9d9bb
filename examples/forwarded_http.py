"""A web server inside a rented job, reached from this machine through a forwarded port.

Run: ``.venv/bin/python examples/forwarded_http.py`` (needs root for the script sandbox and bwrap,
like ``dgpu demo``)

It starts a local development network (a bootstrap node serving the development ledger and a
provider allowing forwards, as separate processes on 127.0.0.1), rents a GPU for an interactive
script job that serves a page with busybox ``httpd`` on 127.0.0.1:8080 *inside the job* (the job
has no network of its own), asks for ``forward=["0:8080"]``, and prints what the forwarded local
port serves. Closing the rental stops the job and the forward; unused minutes are refunded.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx
import trio

from dgpu.client import Client
from dgpu.client.demo import DemoNetwork
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.services.forward_client import ForwardInfo

SERVE = """mkdir -p www
echo "hello from inside the job on $(uname -n)" > www/index.html
busybox httpd -p 127.0.0.1:8080 -h www
echo serving
"""


async def main(net: DemoNetwork) -> None:
    async with Client.connect([net.addrs["bootstrap"]], ledger_url=net.ledger_url, accept_simulated=True) as client:
        await client.faucet(1_000_000)
        offers = await client.find_offers(wait_s=30)
        print(f"offer: {offers[0].gpu_model} at {offers[0].price_per_minute} per minute, "
              f"forwarding allowed: {bool(offers[0].offer.forward)}")
        rental = await client.rent(offers[0], script=SERVE, max_minutes=5, interactive=True, forward=["0:8080"])
        ready: list[ForwardInfo] = []
        got_one = trio.Event()

        def on_forward(info: ForwardInfo) -> None:
            print(info.line)
            ready.append(info)
            got_one.set()

        async with trio.open_nursery() as nursery:
            async def run() -> None:
                result = await rental.run(on_forward=on_forward)
                print(f"rental ended {result.state}: paid {result.paid} + fee {result.fee}, refunded {result.refunded}")

            nursery.start_soon(run)
            await got_one.wait()
            url = f"http://127.0.0.1:{ready[0].local_port}/"
            async with httpx.AsyncClient(timeout=20) as http:
                with trio.fail_after(60):
                    while True:  # until the job's server is up
                        try:
                            page = (await http.get(url)).text
                            break
                        except httpx.TransportError:
                            await trio.sleep(0.3)
            print(f"GET {url} -> {page.strip()}")
            rental.cancel()


if __name__ == "__main__":
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-example-"))
    os.chmod(workdir, 0o711)  # script jobs run as their own uid below it
    network = DemoNetwork(workdir)
    try:
        deadline = time.monotonic() + 60
        network.start_bootstrap(deadline, ledger_speed=1)
        network.start_provider("provider", "RTX 4090:24576:1", 1_000, deadline,
                               extra=["--executor", "script", "--allow-forward"])
        trio.run(main, network)
    finally:
        network.stop()
        remove_tree(workdir)
