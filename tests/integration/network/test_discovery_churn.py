"""Discovery through providers that come and go (a real bootstrap process, in-process nodes).

A provider's rendezvous registration lives 2 h. Before: a provider that stopped stayed
registered, and one that died was dialled again by every node at every discovery round (each
failure three libp2p errors in the log) until its registration expired. Now a stopping provider
withdraws its registrations, a peer that cannot be dialled is left alone for a growing while,
and the same peer registered at a new address (restarted on another port) is dialled at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import trio

from dgpu.node.adapters.p2p import P2PConfig, P2PNode, open_node
from dgpu.node.adapters.p2p_discovery import Discovery
from dgpu.protocol.ids import RENDEZVOUS_NAMESPACE
from dgpu.protocol.keys import SigningKey

from .conftest import fresh_network

pytestmark = pytest.mark.integration


@pytest.fixture
def bootstrap() -> Iterator[str]:
    with fresh_network("dgpu-churn-") as net:
        yield net.bootstrap


def _config() -> P2PConfig:
    return P2PConfig(listen_host="127.0.0.1", listen_port=0, gossip=None)


async def _discovered(watcher: Discovery, peer: str) -> bool:
    watcher.known.pop(peer, None)
    return peer in await watcher.discover_once()


async def test_a_stopping_provider_leaves_rendezvous(bootstrap: str) -> None:
    provider_key = SigningKey(secrets.token_bytes(32))
    async with open_node(SigningKey(secrets.token_bytes(32)), _config()) as watcher_node:
        watcher = Discovery(watcher_node, [bootstrap], RENDEZVOUS_NAMESPACE, advertise=False)
        await watcher.join_with_retries(max_tries=8, max_delay_s=2.0)
        async with open_node(provider_key, _config()) as provider_node, \
                trio.open_nursery() as nursery:
            await nursery.start(Discovery(provider_node, [bootstrap], RENDEZVOUS_NAMESPACE, advertise=True).run)
            assert await _discovered(watcher, provider_node.peer_id)
            nursery.cancel_scope.cancel()  # the provider stops (its host is still up meanwhile)
        assert not await _discovered(watcher, provider_node.peer_id)


async def test_a_dead_peer_is_not_redialled_every_round_but_its_new_address_is_at_once(bootstrap: str) -> None:
    dead_key = SigningKey(secrets.token_bytes(32))
    async with open_node(SigningKey(secrets.token_bytes(32)), _config()) as watcher_node:
        watcher = Discovery(watcher_node, [bootstrap], RENDEZVOUS_NAMESPACE, advertise=False)
        await watcher.join_with_retries(max_tries=8, max_delay_s=2.0)

        async def registered_then_gone() -> str:
            """A provider that advertised and died (no withdrawal): its registration stays."""
            node: P2PNode
            async with open_node(dead_key, _config()) as node:
                gone = Discovery(node, [bootstrap], RENDEZVOUS_NAMESPACE, advertise=True)
                await gone.join_with_retries(max_tries=8, max_delay_s=2.0)
                await gone.advertise_once()
                return node.peer_id

        dead = await registered_then_gone()
        assert await _discovered(watcher, dead)
        await watcher.connect_some()
        assert watcher.dial_failures == 1
        for _ in range(3):  # the next rounds find the registration again, and leave it alone
            await watcher.discover_once()
            await watcher.connect_some()
        assert watcher.dial_failures == 1
        assert dead not in watcher_node.connected_peers()

        # the same provider back on another port: its new registration is dialled at once
        async with open_node(dead_key, _config()) as back_node:
            back = Discovery(back_node, [bootstrap], RENDEZVOUS_NAMESPACE, advertise=True)
            await back.join_with_retries(max_tries=8, max_delay_s=2.0)
            await back.advertise_once()
            await watcher.discover_once()
            assert await watcher.connect_some() == 1
            assert dead in watcher_node.connected_peers()
            assert watcher.dial_failures == 1
