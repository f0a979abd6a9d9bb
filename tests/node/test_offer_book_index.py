"""The offer book's price index and lazy expiry agree with a plain filter-and-sort."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dgpu.node.services.offers import OfferBook, OfferQuery
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, GpuSpec, Offer

KEYS = [SigningKey(bytes([i + 1]) * 32).public_key.wallet for i in range(8)]
MINT = SigningKey(b"m" * 32).public_key.wallet


@st.composite
def offers(draw: st.DrawFn) -> Offer:
    issued = draw(st.integers(0, 50))
    return Offer(provider=draw(st.sampled_from(KEYS)), mint=MINT, ledger="development",
                 gpus=(GpuSpec(model=draw(st.sampled_from(["A100", "RTX 4090"])),
                               vram_mib=draw(st.sampled_from([16384, 24576, 81920])), count=draw(st.integers(1, 4)),
                               simulated=draw(st.booleans())),),
                 price_per_minute=draw(st.integers(1, 20)), region=draw(st.sampled_from(["eu", "us"])),
                 executors=draw(st.sampled_from([(Executor.DOCKER,), (Executor.SCRIPT,),
                                                 (Executor.DOCKER, Executor.SCRIPT)])),
                 seq=draw(st.integers(0, 5)), issued_at=issued, expires_at=issued + draw(st.integers(1, 60)))


queries = st.builds(OfferQuery, gpu_model=st.sampled_from([None, "a100", "RTX 4090"]),
                    min_vram_mib=st.sampled_from([0, 20000]), gpu_count=st.integers(1, 3),
                    region=st.sampled_from([None, "eu"]), max_price_per_minute=st.sampled_from([None, 10]),
                    executor=st.sampled_from([None, Executor.DOCKER]), include_simulated=st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(offers(), st.integers(0, 100)), max_size=40), queries, st.integers(0, 120),
       st.integers(1, 8))
def test_index_matches_a_naive_book(puts: list[tuple[Offer, int]], query: OfferQuery, now: int, capacity: int) -> None:
    book = OfferBook(capacity=capacity)
    naive: dict[str, Offer] = {}
    arrival: dict[str, int] = {}
    renewals: dict[str, int] = {}
    arrivals = 0
    clock = 0
    for offer, dt in puts:
        clock += dt % 5
        naive = {p: o for p, o in naive.items() if o.expires_at > clock}
        old = naive.get(offer.provider)
        stored = book.put(offer, "peer", now=clock)
        if old is not None and offer.seq <= old.seq:
            assert not stored
            continue
        if old is None and len(naive) >= capacity:
            # the latest arrival that never renewed makes room; none: the newcomer is refused
            fresh = [o for o in naive.values() if not renewals[o.provider]]
            if not fresh:
                assert not stored
                continue
            del naive[max(fresh, key=lambda o: arrival[o.provider]).provider]
        assert stored
        if old is None:
            arrivals += 1
            arrival[offer.provider], renewals[offer.provider] = arrivals, 0
        else:
            renewals[offer.provider] += 1
        naive[offer.provider] = offer
    at = clock + now
    live = [o for o in naive.values() if o.expires_at > at and query.matches(o)]

    def vram(o: Offer) -> int:
        return max(g.vram_mib for g in o.gpus)

    orders = {
        "price": lambda o: (o.price_per_minute, -vram(o), o.provider),
        "-price": lambda o: (-o.price_per_minute, -vram(o), o.provider),
        "vram": lambda o: (vram(o), o.price_per_minute, o.provider),
        "-vram": lambda o: (-vram(o), o.price_per_minute, o.provider),
    }
    for order, key in orders.items():
        assert [e.offer for e in book.query(query, now=at, order=order)] == sorted(live, key=key), order
    assert len(book) == sum(1 for o in naive.values() if o.expires_at > at)
