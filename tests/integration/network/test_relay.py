"""Circuit relay v2 in one process on 127.0.0.1: a relay (hop, under RelayLimits), a provider
that reserves a slot on it, and a renter that reaches the provider only through the relay.

Loopback cannot hide the provider, so "only through the relay" is arranged the way a NAT would
leave it: the renter is never told the provider's direct address. The real NAT is in
``tests/integration/nat``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from dgpu.node.adapters.p2p import P2PConfig, P2PNode, open_node
from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.adapters.p2p_relay import RelayLimits, is_circuit
from dgpu.node.errors import NetworkError
from dgpu.protocol.keys import SigningKey

ECHO = "/dgpu-test/echo/1.0.0"
BULK = "/dgpu-test/bulk/1.0.0"


def _key() -> SigningKey:
    return SigningKey(secrets.token_bytes(32))


@asynccontextmanager
async def _node(**kw: object) -> AsyncIterator[P2PNode]:
    # no hole punching on loopback: the provider is directly dialable there
    async with open_node(_key(), P2PConfig(gossip=None, hole_punch=False, **kw)) as node:  # type: ignore[arg-type]
        yield node


async def _echo(fs: FramedStream) -> None:
    data = await fs.read_frame()
    await fs.write_frame(data[::-1])


async def _bulk(fs: FramedStream) -> None:
    n = int((await fs.read_frame()).decode())
    for _ in range(n):
        await fs.write_frame(b"x" * 32_768)


async def test_a_renter_reaches_a_provider_only_through_its_reservation() -> None:
    limits = RelayLimits(reservation_ttl_s=120, circuit_bytes=4 * 1024 * 1024)
    async with _node(relay=limits) as relay, _node() as provider, _node() as renter:
        assert relay.relay_service is not None and provider.relay is not None and renter.relay is not None
        provider.set_handler(ECHO, _echo, max_frame_bytes=1024, read_timeout_s=5)
        provider.set_handler(BULK, _bulk, max_frame_bytes=65_536, read_timeout_s=5)
        direct = provider.addrs
        assert not any(is_circuit(a) for a in direct)

        # without a reservation the relay refuses the circuit, and the renter says so
        renter.relay.use_relays([relay.multiaddr])
        with pytest.raises(NetworkError, match="relay"):
            await renter.open_stream(provider.peer_id, ECHO, max_frame_bytes=1024, read_timeout_s=5)

        assert await provider.relay.reserve(*_relay_entry(relay))
        circuits = provider.addrs  # reserved: only the circuit address is advertised
        assert len(circuits) == 1 and is_circuit(circuits[0]) and circuits[0].endswith(provider.peer_id)
        assert relay.relay_service.reservations_active == 1

        renter.add_addrs(provider.peer_id, circuits)
        fs = await renter.open_stream(provider.peer_id, ECHO, max_frame_bytes=1024, read_timeout_s=5)
        await fs.write_frame(b"negotiate")
        assert await fs.read_frame() == b"etaitogen"
        await fs.close()
        assert renter.path_to(provider.peer_id) == "relay"
        assert provider.path_to(renter.peer_id) == "relay"
        assert relay.relay_service.circuits_opened == 1

        # a download larger than the circuit's byte cap is cut, and the cut is counted
        fs = await renter.open_stream(provider.peer_id, BULK, max_frame_bytes=65_536, read_timeout_s=5)
        await fs.write_frame(b"200")  # 200 x 32 KiB = 6.25 MiB > 4 MiB
        got = 0
        with pytest.raises(NetworkError):
            for _ in range(200):
                got += len(await fs.read_frame())
        assert 0 < got < 200 * 32_768
        with trio.fail_after(10):
            while relay.relay_service.circuits_cut < 1:
                await trio.sleep(0.05)
        metrics = relay.relay_service.metrics()
        assert metrics["relay_limit_circuit_bytes"] == 4 * 1024 * 1024
        assert metrics["relay_bytes_total"] >= got


def _relay_entry(relay: P2PNode) -> tuple[object, str]:
    from dgpu.node.adapters.p2p import parse_peer_addr

    return parse_peer_addr(relay.multiaddr), relay.multiaddr


async def test_reservations_per_ip_and_in_total_are_capped() -> None:
    async with _node(relay=RelayLimits(max_reservations=8, max_reservations_per_ip=2)) as relay, \
            _node() as a, _node() as b, _node() as c:
        entry = _relay_entry(relay)
        assert a.relay and b.relay and c.relay and relay.relay_service
        assert await a.relay.reserve(*entry)  # type: ignore[arg-type]
        assert await b.relay.reserve(*entry)  # type: ignore[arg-type]
        assert not await c.relay.reserve(*entry)  # type: ignore[arg-type]  # third from 127.0.0.1
        assert await a.relay.reserve(*entry)  # type: ignore[arg-type]  # a refresh is not a new one
        assert relay.relay_service.reservations_active == 2
        assert relay.relay_service.reservations_refused == 1


async def test_reservations_are_refreshed_and_dropped_when_no_longer_wanted() -> None:
    # 3 s reservations: the provider must refresh them (at a third left) to keep its address
    async with _node(relay=RelayLimits(reservation_ttl_s=3)) as relay, _node() as provider, \
            trio.open_nursery() as nursery:
        assert provider.relay is not None and relay.relay_service is not None
        wanted = [True]
        direct = provider.addrs
        nursery.start_soon(provider.relay.maintain, [_relay_entry(relay)], lambda: wanted[0], 2, 0.2)
        with trio.fail_after(30):
            while provider.relay.reservations_made < 4:  # the first and three refreshes
                await trio.sleep(0.1)
        # more than one lifetime later the same reservation still stands
        assert relay.relay_service.reservations_active == 1 and is_circuit(provider.addrs[0])
        wanted[0] = False  # e.g. the provider turned out to be publicly reachable
        with trio.fail_after(10):
            while provider.relay.reservations:
                await provider.relay.changed.wait()
        assert provider.addrs == direct
        nursery.cancel_scope.cancel()


async def test_the_dial_back_says_a_listening_node_is_reachable() -> None:
    from dgpu.node.adapters.reachability import probe, serve_dialback

    async with _node(relay=RelayLimits()) as boot, _node() as node:
        serve_dialback(boot)
        await node.connect(boot.multiaddr)
        answer = await probe(node, boot.peer_id)
        port = int(node.multiaddr.split("/tcp/")[1].split("/", maxsplit=1)[0])
        assert answer is not None and answer["observed"] == "127.0.0.1"
        assert answer["reachable"] == [port] and answer["unreachable"] == []


async def test_reachability_overrides_and_the_undecided_default() -> None:
    from dgpu.node.adapters.reachability import NatTraversal
    from dgpu.node.errors import ConfigError

    async with _node(relay=RelayLimits()) as boot, _node() as node:
        assert not NatTraversal(node, [boot.multiaddr], mode="public").wants_relays()
        assert NatTraversal(node, [boot.multiaddr], mode="private").wants_relays()
        auto = NatTraversal(node, [boot.multiaddr])  # P2PConfig.reachability: "auto"
        assert auto.status == "unknown" and not auto.wants_relays()
        auto.undecided_s = 0.0  # no verdict in time (bootstraps without the dial-back): reserve
        await trio.sleep(0.01)
        assert auto.wants_relays()
        with pytest.raises(ConfigError):
            NatTraversal(node, [boot.multiaddr], mode="sometimes")
