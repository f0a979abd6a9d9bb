"""Offer sync: a node that joins gets its neighbour's current offers at once, each one validated
exactly as if it had been gossiped (a tampered or far-future offer is refused), bounded."""

from __future__ import annotations

import secrets

import trio

from dgpu.node.services.offer_sync import MAX_SYNC_OFFERS, OfferSyncServer, sync_offers
from dgpu.node.services.offers import OfferBook, OfferValidator
from dgpu.protocol.keys import SigningKey
from tests.node.conftest import make_offer
from tests.node.test_negotiation_service import NOW
from tests.node.test_sybil_offers import YEAR_2100, PeersForTests, gossip


def validator() -> OfferValidator:
    return OfferValidator(OfferBook(), clock=lambda: NOW, accept_simulated=False)


async def test_a_joining_node_gets_the_neighbours_offers_each_validated() -> None:
    neighbour = validator()
    keys = [SigningKey(secrets.token_bytes(32)) for _ in range(3)]
    for i, key in enumerate(keys):
        assert neighbour(gossip(make_offer(key, now=NOW, price=100 + i, ttl=300), key, forwarder="x",
                                envelope_ttl=300))
    server = OfferSyncServer(neighbour.book, clock=lambda: NOW)
    newcomer = validator()
    async with trio.open_nursery() as nursery:
        network = PeersForTests(nursery, {"neighbour": server.handle})
        assert await sync_offers(network, "neighbour", newcomer) == 3  # type: ignore[arg-type]
        assert {e.offer.provider for e in newcomer.book._entries.values()} == {k.public_key.wallet for k in keys}
        assert all(e.forwarder == "neighbour" for e in newcomer.book._entries.values())
        # synced again: the same envelopes are replays now, nothing is stored twice
        assert await sync_offers(network, "neighbour", newcomer) == 0  # type: ignore[arg-type]
        assert await sync_offers(network, "nobody", newcomer) == 0  # type: ignore[arg-type]


async def test_a_lying_neighbour_gets_nothing_past_the_validator() -> None:
    liar = SigningKey(secrets.token_bytes(32))
    honest = SigningKey(secrets.token_bytes(32))
    book = OfferBook()
    far = gossip(make_offer(liar, now=NOW).model_copy(update={"expires_at": YEAR_2100}), liar, forwarder="x")
    good = gossip(make_offer(honest, now=NOW, ttl=300), honest, forwarder="x", envelope_ttl=300)
    tampered = good.data.replace(b'"price_per_minute":100', b'"price_per_minute":1')
    # the liar's book holds what its own validator would never have stored
    book.put(make_offer(liar, now=NOW).model_copy(update={"expires_at": YEAR_2100}), "p", now=NOW, data=far.data)
    book.put(make_offer(SigningKey(secrets.token_bytes(32)), now=NOW), "p", now=NOW, data=tampered)
    book.put(make_offer(SigningKey(secrets.token_bytes(32)), now=NOW), "p", now=NOW, data=b"\xffnot json")
    newcomer = validator()
    async with trio.open_nursery() as nursery:
        network = PeersForTests(nursery, {"liar": OfferSyncServer(book, clock=lambda: NOW).handle})
        assert await sync_offers(network, "liar", newcomer) == 0  # type: ignore[arg-type]
    assert len(newcomer.book) == 0 and newcomer.rejected["expiry_too_far"] == 1


def test_an_answer_is_bounded() -> None:
    book = OfferBook(capacity=2 * MAX_SYNC_OFFERS)
    for _ in range(MAX_SYNC_OFFERS + 10):
        key = SigningKey(secrets.token_bytes(32))
        book.put(make_offer(key, now=NOW), "p", now=NOW, data=b"x" * 100)
    assert len(OfferSyncServer(book, clock=lambda: NOW).envelopes()) == MAX_SYNC_OFFERS
