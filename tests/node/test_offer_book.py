"""The offer book: replace by seq, expiry, bound, queries sorted by price."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import trio
import trio.testing

from dgpu.node.services.offers import OfferBook, OfferQuery
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, Offer


def _key() -> SigningKey:
    return SigningKey(secrets.token_bytes(32))


def test_higher_seq_replaces_and_lower_or_equal_is_refused(
    key: SigningKey, offer_factory: Callable[..., Offer]
) -> None:
    make_offer = offer_factory
    book = OfferBook()
    assert book.put(make_offer(key, seq=5, price=100), "p", now=1000)
    assert not book.put(make_offer(key, seq=5, price=1), "p", now=1000)
    assert not book.put(make_offer(key, seq=4, price=1), "p", now=1000)
    assert book.put(make_offer(key, seq=6, price=90), "p", now=1000)
    entry = book.get(key.public_key.wallet)
    assert entry is not None and entry.offer.seq == 6 and entry.offer.price_per_minute == 90
    assert len(book) == 1


def test_expired_offers_drop_out_of_queries(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    book = OfferBook()
    book.put(make_offer(key, now=1000, ttl=100), "p", now=1000)
    assert len(book.query(OfferQuery(), now=1099)) == 1
    assert book.query(OfferQuery(), now=1100) == []
    assert len(book) == 0


def test_bound_evicts_the_latest_newcomer_first(offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    book = OfferBook(capacity=2)
    a, b, c, d = _key(), _key(), _key(), _key()
    book.put(make_offer(a, ttl=100), "a", now=1000)
    book.put(make_offer(b, ttl=300), "b", now=1000)
    assert book.put(make_offer(c, ttl=3000), "c", now=1000)  # evicts b, the latest newcomer
    assert book.get(b.public_key.wallet) is None and book.get(a.public_key.wallet) is not None
    assert book.put(make_offer(a, seq=2, ttl=100), "a", now=1000)  # a renews: it is known now
    book.mark_rented(c.public_key.wallet)
    assert not book.put(make_offer(d, ttl=3000), "d", now=1000)  # a renewed, c rented from: kept
    assert book.get(c.public_key.wallet) is not None
    assert len(book) == 2


def test_one_relay_cannot_fill_the_book(offer_factory: Callable[..., Offer]) -> None:
    book = OfferBook(capacity=8)
    stored = [book.put(offer_factory(_key()), "p", now=1000, forwarder="relay") for _ in range(8)]
    assert sum(stored) == book.max_per_forwarder == 6
    assert book.put(offer_factory(_key()), "p", now=1000, forwarder="another")


def test_query_filters_and_sorts_by_price(offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    book = OfferBook()
    cheap, mid, dear, small, other = _key(), _key(), _key(), _key(), _key()
    book.put(make_offer(dear, price=300), "x", now=1000)
    book.put(make_offer(cheap, price=100), "x", now=1000)
    book.put(make_offer(mid, price=200, count=2), "x", now=1000)
    book.put(make_offer(small, price=50, vram=8192, model="RTX 3070"), "x", now=1000)
    book.put(make_offer(other, price=10, region="us"), "x", now=1000)

    def providers(q: OfferQuery) -> list[str]:
        return [e.offer.provider for e in book.query(q, now=1000)]

    w = {k: k.public_key.wallet for k in (cheap, mid, dear, small, other)}
    assert providers(OfferQuery(region="eu")) == [w[small], w[cheap], w[mid], w[dear]]
    assert providers(OfferQuery(gpu_model="rtx 4090", region="eu")) == [w[cheap], w[mid], w[dear]]
    assert providers(OfferQuery(min_vram_mib=16_000, region="eu")) == [w[cheap], w[mid], w[dear]]
    assert providers(OfferQuery(gpu_count=2)) == [w[mid]]
    assert providers(OfferQuery(max_price_per_minute=150, region="eu")) == [w[small], w[cheap]]
    assert providers(OfferQuery(executor=Executor.SCRIPT)) == []


def test_simulated_offers_only_when_asked(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    book = OfferBook()
    book.put(make_offer(key, simulated=True), "p", now=1000)
    assert book.query(OfferQuery(), now=1000) == []
    assert len(book.query(OfferQuery(include_simulated=True), now=1000)) == 1


async def test_wait_for_wakes_on_a_matching_offer(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    book = OfferBook()
    got = []

    async def waiter() -> None:
        got.extend(await book.wait_for(OfferQuery(), now=lambda: 1000))

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.sleep(0.01)
        assert got == []
        book.put(make_offer(key), "p", now=1000)
    assert len(got) == 1



async def test_wait_for_yields_even_when_the_offers_are_already_there(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    book = OfferBook()
    book.put(offer_factory(key), "p", now=1000)
    with trio.testing.assert_checkpoints():
        assert len(await book.wait_for(OfferQuery(), now=lambda: 1000)) == 1
    # a renter polling find_offers in a loop lets the rest of its node run (it used to starve it)
    others_ran = trio.Event()

    async def another_task() -> None:
        others_ran.set()

    async with trio.open_nursery() as n:
        n.start_soon(another_task)
        for _ in range(1000):
            await book.wait_for(OfferQuery(), now=lambda: 1000)
            if others_ran.is_set():
                break
    assert others_ran.is_set()


def test_rejection_names_the_first_reason_an_offer_does_not_match(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    offer = offer_factory(key, simulated=True, price=100)  # an RTX 4090, 24 GiB, docker jobs
    assert "simulated" in str(OfferQuery().rejection(offer))
    assert OfferQuery(include_simulated=True).rejection(offer) is None
    assert "not H100" in str(OfferQuery(include_simulated=True, gpu_model="H100").rejection(offer))
    assert "fewer than 90000" in str(OfferQuery(include_simulated=True, min_vram_mib=90_000).rejection(offer))
    assert "above 1" in str(OfferQuery(include_simulated=True, max_price_per_minute=1).rejection(offer))
    assert "not script" in str(OfferQuery(include_simulated=True, executor=Executor.SCRIPT).rejection(offer))
    book = OfferBook()
    book.put(offer, "p", now=1000)
    assert [reason for _, reason in book.closest(OfferQuery(gpu_model="H100"), now=1000)] == [
        "simulated GPU (hidden unless simulated offers are accepted)"]
