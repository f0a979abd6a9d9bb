"""Sybil-resistant offer books: a flood of validly signed offers from fresh keys neither outlives
the protocol's offer lifetime nor evicts the providers a renter knows, and ``rent`` falls back
to the next offer when the cheapest cannot be reached."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio.testing

from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.errors import NetworkError
from dgpu.node.ports.network import GossipMessage
from dgpu.node.services.blobs import BlobShelf
from dgpu.node.services.offers import OfferBook, OfferQuery, OfferValidator
from dgpu.node.services.renter import Renter
from dgpu.protocol.envelope import seal
from dgpu.protocol.ids import MAX_OFFER_TTL_S
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, Offer
from tests.node.conftest import make_offer
from tests.node.test_money_before_work import PROVIDER, RENTER, stack
from tests.node.test_negotiation_service import NOW, MemRaw

YEAR_2100 = 4_102_444_800
SYBILS = 1_000


def gossip(offer: Offer, key: SigningKey, *, forwarder: str, envelope_ttl: int = MAX_OFFER_TTL_S) -> GossipMessage:
    data = seal(offer, key, nonce=secrets.token_bytes(16), issued_at=NOW, expires_at=NOW + envelope_ttl)
    return GossipMessage(topic="dgpu/offers/1", origin=f"peer-{key.public_key.wallet[:8]}",
                         origin_key=key.public_key.raw, forwarder=forwarder, data=data)


def test_a_thousand_fresh_keys_do_not_evict_the_real_providers() -> None:
    validator = OfferValidator(OfferBook(capacity=1_000), clock=lambda: NOW, accept_simulated=False)
    real = [SigningKey(secrets.token_bytes(32)) for _ in range(2)]
    for key in real:
        assert validator(gossip(make_offer(key, now=NOW, ttl=300), key, forwarder="bootstrap", envelope_ttl=300))
    # far-future expiry: refused however valid the signature and the envelope are
    for _ in range(SYBILS):
        key = SigningKey(secrets.token_bytes(32))
        offer = make_offer(key, now=NOW, price=1).model_copy(update={"expires_at": YEAR_2100})
        assert not validator(gossip(offer, key, forwarder="attacker"))
    assert validator.rejected["expiry_too_far"] == SYBILS
    # the longest lifetime allowed, cheaper than anyone, through one relay and through many
    for i in range(2 * SYBILS):
        key = SigningKey(secrets.token_bytes(32))
        validator(gossip(make_offer(key, now=NOW, price=1, ttl=MAX_OFFER_TTL_S), key,
                         forwarder="attacker" if i < SYBILS else f"attacker-{i}"))
    book = validator.book
    assert len(book) == book.capacity
    assert all(book.get(k.public_key.wallet) is not None for k in real)


class PeersForTests:
    """TEST DOUBLE of the ``Network`` port for ``rent``: the peers in ``serve`` answer through
    in-memory streams with a real provider's handler; every other peer cannot be reached."""

    def __init__(self, nursery: trio.Nursery, serve: dict[str, Callable[[FramedStream], Awaitable[None]]]) -> None:
        self.nursery = nursery
        self.serve = serve
        self.dialled: list[str] = []

    def add_addrs(self, peer: str, addrs: list[str], ttl_s: int = 600) -> None:
        del peer, addrs, ttl_s

    async def open_stream(self, peer: str, protocol: str, *, max_frame_bytes: int,
                          read_timeout_s: float) -> FramedStream:
        self.dialled.append(peer)
        if peer not in self.serve:
            raise NetworkError(f"cannot dial {peer}")
        a, b = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._handle, self.serve[peer], FramedStream(MemRaw(a), max_frame_bytes=max_frame_bytes,
                                                                              read_timeout_s=read_timeout_s))
        return FramedStream(MemRaw(b), max_frame_bytes=max_frame_bytes, read_timeout_s=read_timeout_s)

    @staticmethod
    async def _handle(handler: Callable[[FramedStream], Awaitable[None]], fs: FramedStream) -> None:
        """As the node's adapter does: the stream is closed once its handler returns."""
        try:
            await handler(fs)
        finally:
            await fs.close()


async def test_rent_falls_back_to_the_next_offer_when_the_cheapest_cannot_be_reached(tmp_path: Path) -> None:
    async with stack(tmp_path) as s, trio.open_nursery() as nursery:
        real = s.negotiator.offers.offer_for_seq(3)
        assert real is not None
        book = OfferBook()
        book.put(real, "provider-peer", now=NOW)
        sybils = [SigningKey(secrets.token_bytes(32)) for _ in range(2)]
        for key in sybils:  # cheaper, so tried first; nobody answers there
            book.put(make_offer(key, now=NOW, price=1, executors=(Executor.SCRIPT,)), f"sybil-{key.public_key.wallet}",
                     now=NOW)
        network = PeersForTests(nursery, {"provider-peer": s.negotiator.handle})
        renter = Renter(network, RENTER, book, BlobShelf(tmp_path / "blobs"), s.ledgers.renter,  # type: ignore[arg-type]
                        accept_simulated=False, clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16))
        rental = await renter.rent(script="true", max_minutes=10)
        assert rental.agreement.terms.provider == PROVIDER.public_key.wallet
        assert network.dialled[-1] == "provider-peer" and len(network.dialled) == 3
        # the unreachable ones dropped out of the choices; the one we rented from is kept
        assert [e.offer.provider for e in book.query(OfferQuery(), now=NOW)] == [real.provider]
