"""The gossip validator: every offer is checked before it is stored or relayed."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from dgpu.node.ports.gpu import GpuInfo, simulated_gpus
from dgpu.node.ports.network import GossipMessage, Verdict
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.offers import OfferBook, OfferValidator
from dgpu.node.services.publisher import OfferPublisher, OfferTerms
from dgpu.protocol.envelope import seal
from dgpu.protocol.ids import MAX_OFFER_BYTES
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Offer

NOW = 1_000


def _msg(data: bytes, origin: SigningKey) -> GossipMessage:
    return GossipMessage(
        topic="dgpu/offers/1", origin="peer", origin_key=origin.public_key.raw, forwarder="fwd", data=data
    )


def _sealed(offer: Offer, key: SigningKey, *, now: int = NOW, ttl: int = 300) -> bytes:
    return seal(offer, key, nonce=secrets.token_bytes(16), issued_at=now, expires_at=now + ttl)


def _validator(accept_simulated: bool = False) -> OfferValidator:
    return OfferValidator(OfferBook(), clock=lambda: NOW, accept_simulated=accept_simulated)


def test_valid_offer_is_accepted_and_stored(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    v = _validator()
    assert v(_msg(_sealed(make_offer(key), key), key))
    assert v.book.last_seq(key.public_key.wallet) == 1


def test_offer_signed_by_another_key_is_rejected(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    other = SigningKey(secrets.token_bytes(32))
    v = _validator()
    # envelope and offer by `other`, but the pubsub origin is `key`
    assert not v(_msg(_sealed(make_offer(other), other), key))
    # the offer names `key` as provider but `other` signed it
    assert not v(_msg(_sealed(make_offer(key), other), other))
    assert v.rejected["signer_not_sender"] == 1 and v.rejected["provider_not_signer"] == 1
    assert len(v.book) == 0


def test_expired_offer_is_rejected(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    v = _validator()
    old = make_offer(key, now=NOW - 400, ttl=300)
    assert not v(_msg(_sealed(old, key, now=NOW - 400), key))
    assert v.rejected["expired"] == 1


def test_older_or_equal_seq_is_rejected(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    v = _validator()
    assert v(_msg(_sealed(make_offer(key, seq=7), key), key)) is True
    assert v(_msg(_sealed(make_offer(key, seq=7), key), key)) is Verdict.IGNORE
    assert v(_msg(_sealed(make_offer(key, seq=3), key), key)) is Verdict.IGNORE
    assert v.rejected["stale_seq"] == 2
    assert v.book.last_seq(key.public_key.wallet) == 7


def test_replayed_envelope_is_rejected_even_after_book_eviction(
    key: SigningKey, offer_factory: Callable[..., Offer]
) -> None:
    make_offer = offer_factory
    v = _validator()
    data = _sealed(make_offer(key, seq=2), key)
    assert v(_msg(data, key))
    v.book.drop_expired(NOW + 10_000)  # book forgets the provider
    assert not v(_msg(data, key))
    assert v.rejected["replay"] == 1


def test_oversized_and_malformed_are_rejected(key: SigningKey) -> None:
    v = _validator()
    assert not v(_msg(b"{" + b" " * MAX_OFFER_BYTES + b"}", key))
    assert not v(_msg(b"\xff\x00not json", key))
    assert not v(_msg(b'{"v":1}', key))
    assert v.rejected["invalid_request"] == 2 and v.rejected["oversize"] == 1


def test_missing_origin_key_is_rejected(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    v = _validator()
    msg = GossipMessage(topic="t", origin="x", origin_key=None, forwarder="f", data=_sealed(make_offer(key), key))
    assert not v(msg)


def test_simulated_offers_follow_policy(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    make_offer = offer_factory
    data = _sealed(make_offer(key, simulated=True), key)
    assert not _validator(accept_simulated=False)(_msg(data, key))
    assert _validator(accept_simulated=True)(_msg(data, key))


async def test_publisher_seq_increases_and_passes_the_validator(
    key: SigningKey, offer_factory: Callable[..., Offer]
) -> None:
    make_offer = offer_factory
    sent: list[bytes] = []

    async def publish(data: bytes) -> None:
        sent.append(data)

    template = make_offer(key)
    gpu = GpuInfo(index=0, uuid="GPU-test-0", model=template.gpus[0].model, raw_name=template.gpus[0].model,
                  memory_total_bytes=template.gpus[0].vram_mib * 1024**2, power_limit_mw=None,
                  compute_capability=None, driver_version="test", cuda_version=None, simulated=False)
    inventory = Inventory([gpu], owner=key.public_key.wallet, price_per_gpu_minute=template.price_per_minute,
                          max_jobs=1, clock=lambda: NOW)
    terms = OfferTerms(mint=template.mint, ledger=template.ledger, region=template.region,
                       executors=template.executors)
    pub = OfferPublisher(key, inventory, terms, publish, clock=lambda: NOW, clock_ms=lambda: NOW * 1000)
    first = await pub.publish_now()
    second = await pub.publish_now()
    assert first is not None and second is not None and second.seq > first.seq
    assert first.gpus == template.gpus and first.price_per_minute == template.price_per_minute
    assert pub.offer_for_seq(first.seq) == first and pub.offer_for_seq(second.seq) == second
    v = _validator()
    assert v(_msg(sent[0], key)) and v(_msg(sent[1], key))
    assert not v(_msg(sent[0], key))


async def test_publisher_pause_resume_profile_and_recent_offers(
    key: SigningKey, offer_factory: Callable[..., Offer]
) -> None:
    sent: list[bytes] = []

    async def publish(data: bytes) -> None:
        sent.append(data)

    template = offer_factory(key, simulated=True)
    inventory = Inventory(simulated_gpus(template.gpus, owner=key.public_key.wallet), owner=key.public_key.wallet,
                          price_per_gpu_minute=100, max_jobs=1, clock=lambda: NOW)
    pub = OfferPublisher(key, inventory, OfferTerms(mint=template.mint, ledger="dev"), publish, clock=lambda: NOW,
                         clock_ms=lambda: NOW * 1000, recent=2)
    pub.pause()
    assert pub.paused and await pub.publish_now() is None and sent == []
    pub.resume()
    seqs = [o.seq for o in [await pub.publish_now() for _ in range(3)] if o is not None]
    assert len(sent) == 3 and pub.offer_for_seq(seqs[0]) is None and pub.offer_for_seq(seqs[2]) is not None
    with pytest.raises(ValueError):
        pub.update_profile(region="not a label!", price_per_gpu_minute=5)
    assert pub.profile().price_per_minute == 100 and pub.terms.region == "local"  # nothing changed
    offer = pub.update_profile(price_per_gpu_minute=250, region="eu-west")
    assert (offer.price_per_minute, offer.region) == (250, "eu-west") == (inventory.price_per_gpu_minute,
                                                                          pub.terms.region)
