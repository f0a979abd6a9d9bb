"""The gossip validator: every offer is checked before it is stored or relayed."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from dgpu.node.ports.network import GossipMessage, Verdict
from dgpu.node.services.offers import OfferBook, OfferPublisher, OfferValidator
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

    pub = OfferPublisher(key, lambda: make_offer(key), publish, clock=lambda: NOW, clock_ms=lambda: NOW * 1000)
    first = await pub.publish_now()
    second = await pub.publish_now()
    assert second.seq > first.seq
    v = _validator()
    assert v(_msg(sent[0], key)) and v(_msg(sent[1], key))
    assert not v(_msg(sent[0], key))
