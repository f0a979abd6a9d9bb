"""``/dgpu/offers-sync/1.0.0``: a node that joins asks its neighbours for the offers they hold
(and, now and then, one neighbour at random again).

Instead of every provider republishing whenever a node joins (a wave that reaches every node),
the newcomer opens one stream to each new neighbour; the neighbour writes the signed envelopes
of the offers it holds, cheapest first, then the withdrawals still in force, one per frame, and
closes. Every envelope goes through
the same :class:`~dgpu.node.services.offers.OfferValidator` as gossip, with the neighbour as
the forwarder (so its relay quota applies): nothing is trusted for coming this way. Both sides
are bounded: ``MAX_SYNC_OFFERS`` frames and ``MAX_SYNC_BYTES`` in all, short deadlines.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from dgpu.node.errors import NetworkError, StreamError
from dgpu.node.ports.network import FramedStream, GossipMessage, Network, TopicValidator, Verdict
from dgpu.node.services.offers import OfferBook, OfferQuery
from dgpu.protocol.ids import MAX_OFFER_BYTES, OFFERS_SYNC_PROTOCOL, OFFERS_TOPIC
from dgpu.protocol.keys import PublicKey
from dgpu.protocol.peers import peer_id_of_wallet

__all__ = ["MAX_SYNC_BYTES", "MAX_SYNC_OFFERS", "REFRESH_S", "OfferSyncServer", "SyncCounts", "sync_offers",
           "sync_offers_from_peers"]

log = logging.getLogger(__name__)

#: offers one answer carries at most (a renter's book holds 1000; the cheapest come first)
MAX_SYNC_OFFERS: Final = 256
MAX_SYNC_BYTES: Final = MAX_SYNC_OFFERS * MAX_OFFER_BYTES
SYNC_READ_TIMEOUT_S: Final = 10.0
#: attempts to open a sync stream to a new neighbour before it is left to gossip
SYNC_TRIES: Final = 3
#: mean seconds between two syncs from a random neighbour (anti-entropy)
REFRESH_S: Final = 60.0


@dataclass
class SyncCounts:
    """What this node's offer syncs brought in, by why the neighbour was asked. An offer that a
    refresh brings had reached this node neither by gossip nor by the syncs when it joined."""

    #: offers accepted from neighbours asked when first seen on the topic
    join: int = 0
    #: offers accepted from the neighbour drawn at random now and then
    refresh: int = 0
    #: refreshes asked for
    refreshes: int = 0


class OfferSyncServer:
    """Answers offer-sync requests from this node's book."""

    def __init__(self, book: OfferBook, *, clock: Callable[[], int]) -> None:
        self.book = book
        self.clock = clock
        self.served = 0

    def envelopes(self) -> list[bytes]:
        now = self.clock()
        held = [e.data for e in self.book.query(OfferQuery(include_simulated=True), now=now) if e.data]
        held += self.book.withdrawals(now)
        out: list[bytes] = []
        size = 0
        for data in held:
            if len(out) >= MAX_SYNC_OFFERS or size + len(data) > MAX_SYNC_BYTES:
                break
            out.append(data)
            size += len(data)
        return out

    async def handle(self, fs: FramedStream) -> None:
        self.served += 1
        try:
            for data in self.envelopes():
                await fs.write_frame(data)
        except StreamError as exc:
            log.info("offer sync to %s ended: %s", fs.remote_peer, exc)


def _gossip_of(data: bytes, forwarder: str) -> GossipMessage | None:
    """The envelope as the validator sees gossip: the origin is the signer it names (the
    validator checks that signature, so a wrong name only gets the offer refused)."""
    try:
        signer = json.loads(data).get("signer")
        key = PublicKey.from_wallet(signer)
    except (ValueError, TypeError, AttributeError):
        return None
    return GossipMessage(topic=OFFERS_TOPIC, origin=peer_id_of_wallet(key.wallet), origin_key=key.raw,
                         forwarder=forwarder, data=data)


async def sync_offers(node: Network, peer: str, validator: TopicValidator) -> int:
    """Ask ``peer`` for its offers; returns how many the validator accepted. Raises nothing:
    a neighbour that cannot answer is simply not synced from."""
    return await _sync_once(node, peer, validator) or 0


async def _sync_once(node: Network, peer: str, validator: TopicValidator) -> int | None:
    """:func:`sync_offers`, with None when no stream could be opened to ``peer``."""
    accepted, budget = 0, MAX_SYNC_BYTES
    try:
        fs = await node.open_stream(peer, OFFERS_SYNC_PROTOCOL, max_frame_bytes=MAX_OFFER_BYTES,
                                    read_timeout_s=SYNC_READ_TIMEOUT_S)
    except NetworkError as exc:
        log.info("offer sync with %s: %s", peer, exc)
        return None
    try:
        for _ in range(MAX_SYNC_OFFERS):
            try:
                data = await fs.read_frame(timeout_s=SYNC_READ_TIMEOUT_S, max_bytes=MAX_OFFER_BYTES)
            except StreamError:
                break  # the neighbour closed: that was all (or it broke off)
            budget -= len(data)
            if budget < 0:
                break
            msg = _gossip_of(data, peer)
            verdict = validator(msg) if msg is not None else False
            accepted += verdict is True or verdict is Verdict.ACCEPT
    finally:
        await fs.close()
    return accepted


async def sync_offers_from_peers(node: Network, validator: TopicValidator, *, poll_s: float = 0.5,
                                 parallel: int = 4, tries: int = SYNC_TRIES, retry_s: float = 2.0,
                                 refresh_s: float = REFRESH_S, rng: random.Random | None = None,
                                 counts: SyncCounts | None = None) -> None:
    """Ask each peer first seen on the offers topic for the offers it holds, so a node that
    joins sees the current offers at once, not at the next republish. (Providers do not
    republish when peers join: with 30 nodes that wave was ~280 publications at start-up.)
    A peer no stream could be opened to (a loaded machine) is asked again, ``tries`` times
    in all, ``retry_s`` doubling between: one 50-node bench node whose every sync timed out
    held 43 of 50 offers until the next republish.

    Every ``refresh_s`` (jittered by half either way) one topic peer drawn at random is asked
    again: a synced offer is not gossiped on, so a node whose neighbours were still joining
    when it synced from them could miss an offer until its next republish (two 50-node bench
    nodes lacked the same 4 offers for 5 minutes). The offers it already holds cost a set
    lookup each (``OfferBook.holds_envelope``). ``counts``, when given, is kept up to date."""
    rng = rng or random.Random()
    counts = counts if counts is not None else SyncCounts()
    seen: set[str] = set()
    limiter = trio.CapacityLimiter(parallel)

    async def sync(peer: str, refresh: bool) -> None:
        accepted: int | None = None
        for attempt in range(tries):
            if attempt:
                await trio.sleep(retry_s * 2 ** (attempt - 1))
            async with limiter:
                accepted = await _sync_once(node, peer, validator)
            if accepted is not None:
                break
        if accepted:
            log.info("offer %s from %s: %d offer(s)", "refresh" if refresh else "sync", peer, accepted)
            if refresh:
                counts.refresh += accepted
            else:
                counts.join += accepted

    def next_refresh() -> float:
        return trio.current_time() + refresh_s * (0.5 + rng.random())

    refresh_at = next_refresh()
    async with trio.open_nursery() as nursery:
        while True:
            peers = set(node.topic_peers(OFFERS_TOPIC))
            for peer in peers - seen:
                nursery.start_soon(sync, peer, False)
            seen = seen | peers if len(seen) < 10_000 else peers  # bounded; forgetting costs one sync
            if peers and trio.current_time() >= refresh_at:
                nursery.start_soon(sync, rng.choice(sorted(peers)), True)
                counts.refreshes += 1
                refresh_at = next_refresh()
            await trio.sleep(poll_s)
