"""Signed offer withdrawals: a provider that pauses or stops takes its offer back at once; nobody
else can withdraw it, a replayed withdrawal cannot drop a newer offer, and a replayed older offer
cannot bring a withdrawn one back."""

from __future__ import annotations

import json
import secrets

import trio

from dgpu.node.ports.gpu import simulated_gpus
from dgpu.node.ports.network import GossipMessage, Verdict
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.offer_sync import OfferSyncServer, sync_offers
from dgpu.node.services.offers import OfferBook, OfferQuery, OfferValidator
from dgpu.node.services.publisher import OfferPublisher, OfferTerms
from dgpu.protocol.envelope import seal
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Offer, OfferWithdrawal
from tests.node.conftest import make_offer
from tests.node.test_sybil_offers import PeersForTests

NOW = 1_000


def _msg(data: bytes, origin: SigningKey, forwarder: str = "fwd") -> GossipMessage:
    return GossipMessage(topic="dgpu/offers/1", origin="peer", origin_key=origin.public_key.raw,
                         forwarder=forwarder, data=data)


def _sealed(message: Offer | OfferWithdrawal, key: SigningKey) -> bytes:
    return seal(message, key, nonce=secrets.token_bytes(16), issued_at=NOW, expires_at=NOW + 300)


def _withdrawal(key: SigningKey, seq: int, *, provider: SigningKey | None = None) -> OfferWithdrawal:
    return OfferWithdrawal(provider=(provider or key).public_key.wallet, seq=seq, issued_at=NOW)


def _validator(clock: int = NOW) -> OfferValidator:
    return OfferValidator(OfferBook(), clock=lambda: clock, accept_simulated=True)


def _listed(v: OfferValidator, key: SigningKey) -> bool:
    return any(e.offer.provider == key.public_key.wallet for e in v.book.query(OfferQuery(), now=NOW))


def test_a_withdrawal_drops_the_offer_and_an_older_offer_cannot_return(key: SigningKey) -> None:
    v = _validator()
    old_offer = _sealed(make_offer(key, seq=5), key)
    assert v(_msg(old_offer, key)) is True and _listed(v, key)
    assert v(_msg(_sealed(_withdrawal(key, 6), key), key)) is True
    assert not _listed(v, key) and v.withdrawn == 1
    # the same offer replayed, or another older one re-signed, stays out
    assert v(_msg(old_offer, key)) is False and v.rejected["replay"] == 1
    assert v(_msg(_sealed(make_offer(key, seq=6), key), key)) is Verdict.IGNORE
    assert not _listed(v, key)
    # the provider resumes: its next offer (a higher seq) is listed again
    assert v(_msg(_sealed(make_offer(key, seq=7), key), key)) is True and _listed(v, key)


def test_forged_and_replayed_withdrawals_are_refused(key: SigningKey) -> None:
    v = _validator()
    other = SigningKey(secrets.token_bytes(32))
    assert v(_msg(_sealed(make_offer(key, seq=5), key), key)) is True
    # someone else signs a withdrawal naming our provider: as origin, or claiming to be it
    assert v(_msg(_sealed(_withdrawal(other, 9, provider=key), other), other)) is False
    assert v(_msg(_sealed(_withdrawal(other, 9, provider=key), other), key)) is False
    assert v.rejected["provider_not_signer"] == 1 and v.rejected["signer_not_sender"] == 1
    assert _listed(v, key)
    # a real withdrawal, then the provider comes back; the old withdrawal replayed changes nothing
    withdrawal = _sealed(_withdrawal(key, 6), key)
    assert v(_msg(withdrawal, key)) is True
    assert v(_msg(_sealed(make_offer(key, seq=8), key), key)) is True
    assert v(_msg(withdrawal, key)) is False and v.rejected["replay"] == 1
    assert v(_msg(_sealed(_withdrawal(key, 7), key), key)) is Verdict.IGNORE  # older than the offer
    assert _listed(v, key) and v.book.last_seq(key.public_key.wallet) == 8


def test_withdrawals_are_bounded(key: SigningKey) -> None:
    book = OfferBook(capacity=2)
    for _ in range(20):
        stranger = SigningKey(secrets.token_bytes(32))
        assert book.withdraw(_withdrawal(stranger, 1), now=NOW, data=b"x")
    assert len(book.withdrawals(NOW)) == 8  # 4 x capacity: older tombstones go first
    assert book.withdrawals(NOW + 3601) == []  # every older offer has expired by then


def _publisher(key: SigningKey, sent: list[bytes]) -> OfferPublisher:
    async def publish(data: bytes) -> None:
        sent.append(data)

    template = make_offer(key, simulated=True)
    inventory = Inventory(simulated_gpus(template.gpus, owner=key.public_key.wallet), owner=key.public_key.wallet,
                          price_per_gpu_minute=100, max_jobs=1, clock=lambda: NOW)
    return OfferPublisher(key, inventory, OfferTerms(mint=template.mint, ledger="dev"), publish,
                          clock=lambda: NOW, clock_ms=lambda: NOW * 1000)


def _types(sent: list[bytes]) -> list[str]:
    return [json.loads(d)["type"] for d in sent]


async def test_the_publisher_withdraws_on_pause_and_on_stop(key: SigningKey) -> None:
    sent: list[bytes] = []
    pub = _publisher(key, sent)
    v = _validator()
    async with trio.open_nursery() as nursery:
        await nursery.start(pub.run)
        assert _types(sent) == ["offer"]
        pub.pause()
        while len(sent) < 2:  # the run loop withdraws (after its coalescing interval)
            await trio.sleep(0.05)
        assert _types(sent) == ["offer", "offer_withdrawal"] and pub.current is None
        pub.resume()
        while len(sent) < 3:
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()  # the node stops: the offer is withdrawn on the way out
    assert _types(sent) == ["offer", "offer_withdrawal", "offer", "offer_withdrawal"]
    verdicts = [v(_msg(d, key)) for d in sent]
    assert verdicts == [True, True, True, True] and not _listed(v, key)


async def test_offer_sync_hands_on_withdrawals(key: SigningKey) -> None:
    neighbour = _validator()
    assert neighbour(_msg(_sealed(make_offer(key, seq=5), key), key))
    assert neighbour(_msg(_sealed(_withdrawal(key, 6), key), key))
    newcomer = _validator()
    stale = _sealed(make_offer(key, seq=5), key)  # what a neighbour that missed it still relays
    async with trio.open_nursery() as nursery:
        network = PeersForTests(nursery, {"n": OfferSyncServer(neighbour.book, clock=lambda: NOW).handle})
        assert await sync_offers(network, "n", newcomer) == 1  # type: ignore[arg-type]
    assert newcomer.withdrawn == 1
    assert newcomer(_msg(stale, key)) is Verdict.IGNORE and not _listed(newcomer, key)
