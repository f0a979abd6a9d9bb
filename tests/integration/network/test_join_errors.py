"""Joining mistakes a person makes, reported as what to fix: a wrong peer id, nothing listening, a port in use."""

from __future__ import annotations

import secrets
import socket

import pytest
import trio

from dgpu.node.adapters.p2p import P2PConfig, open_node
from dgpu.node.adapters.p2p_discovery import UNREGISTER_TRIES, Discovery
from dgpu.node.errors import ConfigError, NoBootstrapReachable
from dgpu.protocol.ids import RENDEZVOUS_NAMESPACE
from dgpu.protocol.keys import SigningKey


def _key() -> SigningKey:
    return SigningKey(secrets.token_bytes(32))


async def test_a_wrong_bootstrap_peer_id_names_the_real_one_at_once() -> None:
    async with open_node(_key(), P2PConfig(gossip=None)) as boot, \
            open_node(_key(), P2PConfig(gossip=None)) as other, open_node(_key(), P2PConfig(gossip=None)) as node:
        address = boot.multiaddr.split("/p2p/")[0]
        wrong = f"{address}/p2p/{other.peer_id}"
        discovery = Discovery(node, [wrong], RENDEZVOUS_NAMESPACE, advertise=False)
        with trio.fail_after(60), pytest.raises(NoBootstrapReachable) as err:
            # many tries allowed: a mismatch must not be retried
            await discovery.join_with_retries(max_tries=50, max_delay_s=10)
        message = str(err.value)
        assert f"peer id mismatch: the node at {address} is {boot.peer_id}, not {other.peer_id}" in message


async def test_an_unreachable_bootstrap_gives_up_after_bounded_tries() -> None:
    async with open_node(_key(), P2PConfig(gossip=None)) as gone:
        address = gone.multiaddr  # a real identity whose node has stopped: nothing listens there
    async with open_node(_key(), P2PConfig(gossip=None)) as node:
        discovery = Discovery(node, [address], RENDEZVOUS_NAMESPACE, advertise=False)
        with trio.fail_after(120), pytest.raises(NoBootstrapReachable, match="no bootstrap node reachable"):
            await discovery.join_with_retries(max_tries=3, max_delay_s=0.5)


async def test_a_p2p_port_in_use_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with open_node(_key(), P2PConfig(gossip=None, listen_port=port)):
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            async with open_node(_key(), P2PConfig(gossip=None, listen_port=port)):
                pass


class _RendezvousDyingMidRequest:
    """Stands in for py-libp2p's rendezvous client whose bootstrap is killed while it writes."""

    async def advertise(self, namespace: str, ttl: int = 7200) -> float:
        from libp2p.network.stream.exceptions import StreamError

        raise StreamError("Write operation failed: TCP connection reset by remote peer")

    async def find_all_peers(self, namespace: str) -> list[object]:
        from libp2p.network.stream.exceptions import StreamError

        raise StreamError("Write operation failed: TCP connection reset by remote peer")

    def clear_cache(self, namespace: str) -> None:
        raise AssertionError("not reached")


async def test_a_bootstrap_dying_mid_request_is_a_failed_round_not_a_crash() -> None:
    # a StreamError out of find_all_peers used to escape Discovery.run and stop the node
    async with open_node(_key(), P2PConfig(gossip=None)) as node:
        discovery = Discovery(node, [], RENDEZVOUS_NAMESPACE, advertise=True)
        discovery._clients["boot"] = _RendezvousDyingMidRequest()
        assert await discovery.discover_once() == []
        await discovery.advertise_once()


class _RendezvousFailingToOpen:
    """Stands in for a rendezvous client whose stream cannot be opened for the first ``fails`` tries."""

    def __init__(self, fails: int) -> None:
        self.fails, self.tries = fails, 0

    async def unregister(self, namespace: str) -> None:
        from libp2p.host.exceptions import StreamFailure

        self.tries += 1
        if self.tries <= self.fails:
            raise StreamFailure("handshake read failed: fail to read from multiselect communicator")


async def test_a_failed_unregister_is_tried_again_and_gives_up_quietly() -> None:
    # one failed stream open used to leave the stopped provider registered (and dialled) for 2 h
    async with open_node(_key(), P2PConfig(gossip=None)) as node:
        discovery = Discovery(node, [], RENDEZVOUS_NAMESPACE, advertise=True)
        flaky, dead = _RendezvousFailingToOpen(fails=1), _RendezvousFailingToOpen(fails=10)
        discovery._clients.update({"flaky": flaky, "dead": dead})  # type: ignore[dict-item]
        with trio.fail_after(30):
            await discovery.unadvertise()
        assert (flaky.tries, dead.tries) == (2, UNREGISTER_TRIES)
