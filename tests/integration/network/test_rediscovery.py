"""A bootstrap node that restarts: providers re-join and re-advertise, a new renter finds them.

The bootstrap's rendezvous registrations live in its memory, so after a restart it knows no
provider until they advertise again; before the fix providers advertised once at start and then
hourly, and a renter joining after the restart found 0 offers. Here the bootstrap is SIGKILLed and
restarted on the same port with the same identity (its data dir), and a renter that joins
afterwards must see every provider's offer (within 10 s on an idle machine; the test's deadline
has room for a loaded one).
"""

from __future__ import annotations

import secrets
import signal
import socket
import time
from collections.abc import Iterator

import pytest
import trio

from dgpu.node.adapters.p2p import P2PConfig, open_node
from dgpu.node.adapters.p2p_discovery import Discovery
from dgpu.node.adapters.p2p_pubsub import GossipConfig
from dgpu.node.services.offer_sync import sync_offers_from_peers
from dgpu.node.services.offers import OfferBook, OfferValidator
from dgpu.protocol.ids import MAX_OFFER_BYTES, OFFERS_TOPIC, RENDEZVOUS_NAMESPACE
from dgpu.protocol.keys import SigningKey

from .conftest import Network, fresh_network

#: the issue's target is 10 s (met on an idle machine: see bench/README or the closing note); the
#: deadline here has room for a loaded CI machine, since tests assert behaviour, not timings
FIND_WITHIN_S = 45.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_bootstrap(net: Network, port: int) -> None:
    for name in ("bootstrap.addr", "bootstrap.url"):
        (net.workdir / name).unlink(missing_ok=True)
    url_file = net.workdir / "bootstrap.url"
    net.spawn("bootstrap", ["bootstrap", "--port", str(port), "--http-port", "0",
                            "--http-url-file", str(url_file)], status=False)
    deadline = time.monotonic() + 30
    while not url_file.exists():
        assert time.monotonic() < deadline, (net.workdir / "bootstrap.log").read_text()[-3000:]
        time.sleep(0.05)
    net.ledger_url = url_file.read_text().strip()


@pytest.fixture
def network() -> Iterator[Network]:
    with fresh_network("dgpu-rediscovery-", with_bootstrap=False) as net:  # its bootstrap: a fixed port
        yield net


async def _offers_seen_by_a_new_renter(bootstrap: str, want: int, timeout_s: float) -> int:
    async with open_node(SigningKey(secrets.token_bytes(32)),
                         P2PConfig(gossip=GossipConfig(max_data_bytes=MAX_OFFER_BYTES))) as node, \
            trio.open_nursery() as nursery:
        book = OfferBook()
        validator = OfferValidator(book, clock=lambda: int(time.time()), accept_simulated=True)
        await node.subscribe(OFFERS_TOPIC, validator)
        await nursery.start(Discovery(node, [bootstrap], RENDEZVOUS_NAMESPACE, advertise=False).run)
        # as a renter node does: providers do not republish when peers join, joiners sync
        nursery.start_soon(sync_offers_from_peers, node, validator)
        with trio.move_on_after(timeout_s):
            while len(book) < want:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
        return len(book)


async def test_a_restarted_bootstrap_leads_a_new_renter_to_every_offer(network: Network) -> None:
    port = _free_port()
    _start_bootstrap(network, port)
    network.provider("provider-a", "RTX 4090:24576:1", 100)
    network.provider("provider-b", "RTX 4080:16384:1", 200)
    # the network works before the fault (a generous deadline: formation on a loaded machine)
    assert await _offers_seen_by_a_new_renter(network.bootstrap, 2, 60.0) == 2

    boot = network.procs["bootstrap"].popen
    boot.send_signal(signal.SIGKILL)
    boot.wait(timeout=10)
    _start_bootstrap(network, port)
    assert all(p.alive for n, p in network.procs.items() if n != "bootstrap")

    seen = await _offers_seen_by_a_new_renter(network.bootstrap, 2, FIND_WITHIN_S)
    assert seen == 2, f"a renter joining after the restart saw {seen} of 2 offers in {FIND_WITHIN_S} s"
