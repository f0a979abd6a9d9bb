"""A router's per-topic delivery times stay bounded (``BoundedGossipSub``): py-libp2p 0.8.1
appends one for every message it publishes or forwards, and trims them only in the adaptive
gossip step the node turns off, so they grew for as long as a node ran."""

from __future__ import annotations

import secrets
import time
from typing import Any

import trio

from dgpu.node.adapters.p2p import P2PConfig, open_node
from dgpu.node.adapters.p2p_pubsub import DELIVERY_WINDOW_S, GossipConfig
from dgpu.node.ports.network import GossipMessage
from dgpu.protocol.keys import SigningKey

TOPIC = "/dgpu-test/memory/1"


def _accept(msg: GossipMessage) -> bool:
    return True


async def test_delivery_times_older_than_the_window_are_dropped_at_a_heartbeat() -> None:
    async with open_node(SigningKey(secrets.token_bytes(32)), P2PConfig(gossip=GossipConfig(max_data_bytes=4096))
                         ) as node:
        await node.subscribe(TOPIC, _accept)
        router: Any = node.pubsub.router  # type: ignore[union-attr]
        for i in range(5):
            await node.publish(TOPIC, b"offer %d" % i)
        times: list[float] = router.recent_message_deliveries[TOPIC]
        assert len(times) == 5  # the library's own record, one per message published
        # as if the node had run for hours: 10,000 deliveries recorded over a minute ago
        stale = time.time() - DELIVERY_WINDOW_S - 10
        times[:0] = [stale] * 10_000
        with trio.fail_after(60):  # heartbeats are 1 s apart
            while len(times) > 5:
                await trio.sleep(0.1)
        assert min(times) > stale
