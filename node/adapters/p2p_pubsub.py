"""Gossipsub v1.1 for dGPU, with guards around py-libp2p 0.8.1's pubsub crash paths.

Crash paths (LIBP2P-NOTES.md, "Crash paths in pubsub"), and the guard for each:

1. A frame that is not a protobuf RPC: ``Pubsub.stream_handler`` lets ``DecodeError`` escape,
   which ends the whole host. :meth:`GuardedPubsub.stream_handler` catches *everything* (this is
   a libp2p stream handler), resets the stream and forgets the peer's pubsub state.
2. A message whose ``key``/``from`` is malformed: ``signature_validator`` raises inside
   ``push_msg``, a task of the pubsub service, which ends it. :meth:`GuardedPubsub.push_msg`
   drops any message whose processing raises, when it came from a remote peer.
3. Messages over ~64 KiB interleaved with other writes on one stream: inbound RPC frames are
   capped at :data:`MAX_INBOUND_RPC_BYTES` (the library resets the stream and drops the peer),
   data is checked against ``max_data_bytes`` before validation, and
   :meth:`GuardedPubsub.write_msg` serialises writes per stream.

Gossip parameters: heartbeat 1 s (the library default is 120 s), meshsub/1.1 only (1.2's
IDONTWANT stalls under load), spam limiter raised to our rates (its default of 10 msg/s also
throttles our own publishes), adaptive gossip off (it can stretch the heartbeat to 30–60 s;
its step was also the only one to trim a list that grows with every message, so
:class:`BoundedGossipSub` trims it), and peer scoring configured, with P4's weight
**positive** because 0.8.1 subtracts it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams

from dgpu.node.ports.network import GossipMessage

__all__ = [
    "DELIVERY_WINDOW_S",
    "MAX_INBOUND_RPC_BYTES",
    "BoundedGossipSub",
    "GossipConfig",
    "GuardedPubsub",
    "build_gossip",
    "repair_pubsub_streams",
]

log = logging.getLogger(__name__)

#: inbound pubsub frame cap: below the ~64 KiB interleaving hazard; an RPC carries one offer
#: (<= 8 KiB) or control data, so honest peers never come close
MAX_INBOUND_RPC_BYTES = 60 * 1024


class _Ignored(Exception):
    """Internal: validation said IGNORE; push_msg drops the message without a penalty."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    heartbeat_s: int = 1  # an int: 0.8.1 accepts only whole seconds
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    #: our own offers are ~1 per provider per minute; 100/s leaves room for a big swarm's relays
    max_messages_per_topic_per_second: float = 100.0
    max_data_bytes: int = 8 * 1024
    #: P7 (same IP) is off by default: a loopback demo puts every peer on 127.0.0.1
    ip_colocation_weight: float = 0.0


def score_params(cfg: GossipConfig) -> ScoreParams:
    """Peer-score parameters. Signs follow py-libp2p 0.8.1, not go-libp2p (see module doc)."""
    return ScoreParams(
        p1_time_in_mesh=TopicScoreParams(weight=0.01, cap=10.0, decay=0.99),
        p2_first_message_deliveries=TopicScoreParams(weight=1.0, cap=10.0, decay=0.9),
        p3_mesh_message_deliveries=TopicScoreParams(weight=0.0, cap=0.0, decay=1.0),
        # POSITIVE: 0.8.1 computes score -= weight * invalid (go-libp2p: score += w*invalid, w<0)
        p4_invalid_messages=TopicScoreParams(weight=10.0, cap=100.0, decay=0.95),
        # P5 off: 0.8.1's GRAFT-flood detector fires on honest peers while a mesh forms (a
        # PRUNEd peer re-GRAFTs), and with P5 on, those peers were graylisted and offers
        # stopped reaching every node (bench/network.py: 0 of 20 complete at 30 nodes)
        p5_behavior_penalty_weight=0.0,
        p5_behavior_penalty_decay=0.9,
        p5_behavior_penalty_threshold=5.0,
        p7_ip_colocation_weight=cfg.ip_colocation_weight,
        # a peer that sent ~3 invalid offers stops being gossiped to, ~5 and we ignore its
        # publishes, ~8 and it is graylisted; P4 decays 5 % a heartbeat, so it recovers
        gossip_threshold=-25.0,
        publish_threshold=-45.0,
        graylist_threshold=-75.0,
        accept_px_threshold=0.0,
    )


#: the delivery times a router keeps per topic (what 0.8.1's own health step looks at)
DELIVERY_WINDOW_S = 60.0


class BoundedGossipSub(GossipSub):
    """0.8.1's GossipSub, with its per-topic delivery times bounded.

    It appends a timestamp to ``recent_message_deliveries[topic]`` for every message it
    publishes or forwards, and trims the list only in its adaptive-gossip step, which we turn
    off: each node's list grew by one float per message for as long as it ran. Every heartbeat
    now drops the times older than :data:`DELIVERY_WINDOW_S`."""

    def _periodic_security_cleanup(self) -> None:
        super()._periodic_security_cleanup()
        cutoff = time.time() - DELIVERY_WINDOW_S
        for times in self.recent_message_deliveries.values():
            if times and times[0] <= cutoff:  # appended in time order
                times[:] = [t for t in times if t > cutoff]


def build_gossip(cfg: GossipConfig) -> GossipSub:
    return BoundedGossipSub(
        protocols=[PROTOCOL_ID_V11],
        degree=cfg.degree,
        degree_low=cfg.degree_low,
        degree_high=cfg.degree_high,
        heartbeat_interval=cfg.heartbeat_s,
        heartbeat_initial_delay=0.1,
        time_to_live=30,
        gossip_window=3,
        gossip_history=5,
        score_params=score_params(cfg),
        adaptive_gossip_enabled=False,
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=cfg.max_messages_per_topic_per_second,
        max_pending_messages_per_peer=32,  # queued for peers still identifying
    )


class GuardedPubsub(Pubsub):
    """``Pubsub`` with the crash paths closed. Construct before the host connects to anyone."""

    def __init__(self, host: Any, router: GossipSub, *, max_data_bytes: int,
                 on_invalid: Callable[[str, str], None] | None = None) -> None:
        super().__init__(
            host,
            router,
            strict_signing=True,
            # the per-message seen cache, in messages; 2 min TTL covers gossip_history
            seen_ttl=120,
            sweep_interval=30,
            max_inbound_rpc_size=MAX_INBOUND_RPC_BYTES,
            max_subscriptions_per_peer=16,  # we use one topic; a peer needs no more
        )
        self.max_data_bytes = max_data_bytes
        self._on_invalid = on_invalid
        self._write_locks: weakref.WeakKeyDictionary[Any, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        #: counters for tests and metrics: frames/messages the guards dropped
        self.guard_drops: dict[str, int] = {"bad_frame": 0, "bad_message": 0, "oversize": 0}
        #: message ids a validator answered IGNORE for; bounded (the seen cache covers 2 min)
        self._ignored: OrderedDict[bytes, None] = OrderedDict()
        self.ignored_count = 0
        #: pubsub streams re-opened to peers that were connected without one
        self.repairs = 0

    def mark_ignored(self, msg: rpc_pb2.Message) -> None:
        """Called by a topic validator that answers IGNORE, before it returns False."""
        self._ignored[self._msg_id_constructor(msg)] = None
        while len(self._ignored) > 4096:
            self._ignored.popitem(last=False)

    async def validate_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        # 0.8.1 knows only valid/invalid, and blames the forwarder for every invalid message
        # (also for a cached result when a second peer forwards the same one). Out-of-order
        # offers are normal in gossip: blaming honest relays for them graylisted them.
        from libp2p.exceptions import ValidationError

        try:
            await super().validate_msg(msg_forwarder, msg)
        except ValidationError:
            if self._msg_id_constructor(msg) in self._ignored:
                raise _Ignored from None
            raise

    async def stream_handler(self, stream: Any) -> None:
        peer_id = stream.muxed_conn.peer_id
        try:
            await self.continuously_read_stream(stream)
        except Exception as exc:  # libp2p stream handler: an escape kills the host
            self.guard_drops["bad_frame"] += 1
            log.info("dropping pubsub peer %s after a bad frame (%s)", peer_id,
                     type(exc).__name__)
            with trio.move_on_after(2) as scope:
                scope.shield = True
                with contextlib.suppress(Exception):  # the stream may already be gone
                    await stream.reset()
            try:
                self._handle_dead_peer(peer_id)
            except Exception:  # bookkeeping for a peer that was never registered
                log.debug("pubsub bookkeeping for %s failed", peer_id)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        if msg_forwarder == self.my_id:
            try:
                await super().push_msg(msg_forwarder, msg)
            except _Ignored:
                self.ignored_count += 1
            return
        if len(msg.data) > self.max_data_bytes:
            self.guard_drops["oversize"] += 1
            self._count_invalid(msg_forwarder, msg)
            return
        try:
            await super().push_msg(msg_forwarder, msg)
        except _Ignored:
            self.ignored_count += 1
            # seen, as go-libp2p does: the same stale offer arrives from every mesh peer that
            # relayed it, and 0.8.1 marks only accepted messages seen, so each copy went
            # through both signature checks again (30-node bench: ~60 copies per node)
            self._mark_msg_seen(msg)
        except Exception as exc:  # runs as a pubsub service task: an escape ends pubsub
            self.guard_drops["bad_message"] += 1
            self._count_invalid(msg_forwarder, msg)
            log.info("dropped a malformed pubsub message from %s (%s)", msg_forwarder,
                     type(exc).__name__)

    def _count_invalid(self, forwarder: ID, msg: rpc_pb2.Message) -> None:
        scorer = getattr(self.router, "scorer", None)
        for topic in msg.topicIDs:
            if scorer is not None:
                scorer.on_invalid_message(forwarder, topic)
            if self._on_invalid is not None:
                self._on_invalid(str(forwarder), topic)

    async def write_msg(self, stream: Any, rpc_msg: rpc_pb2.RPC) -> bool:
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:  # one RPC at a time per stream: no interleaved frames
            return await super().write_msg(stream, rpc_msg)


def gossip_message(topic: str, forwarder: ID, msg: rpc_pb2.Message) -> GossipMessage:
    """Decode the parts of a pubsub message a validator needs; ValueError if malformed."""
    origin = ID(msg.from_id)
    key: bytes | None = None
    try:
        pub = origin.extract_public_key()
    except Exception as exc:  # libp2p raises assorted types for a malformed peer ID
        raise ValueError("malformed origin peer id") from exc
    if pub is not None:
        raw = pub.to_bytes()
        key = raw if len(raw) == 32 else None
    return GossipMessage(topic=topic, origin=origin.to_base58(), origin_key=key,
                         forwarder=forwarder.to_base58(), data=bytes(msg.data))


async def repair_pubsub_streams(host: Any, pubsub: GuardedPubsub) -> None:
    """Re-open pubsub streams to connected peers that lost theirs.

    When two nodes dial each other at once, one of the two connections is closed; a pubsub
    stream opened on it dies with it while the peer stays connected, and 0.8.1 never
    notices. Such a pair exchanges no gossip: at 30 nodes offers stopped reaching everyone.
    """
    wanted = {str(p) for p in pubsub.protocols}
    store = host.get_peerstore()
    while True:
        await trio.sleep(2)
        for pid in list(host.get_connected_peers()):
            if pid in pubsub.peers or pubsub.is_peer_blacklisted(pid):
                continue
            try:
                speaks = wanted & {str(p) for p in store.get_protocols(pid)}
            except Exception:  # peerstore raises for peers identify has not filled yet
                continue
            if speaks:  # e.g. a bootstrap node speaks no pubsub: leave it alone
                pubsub.repairs += 1
                pubsub._schedule_peer_stream_retry(pid)
