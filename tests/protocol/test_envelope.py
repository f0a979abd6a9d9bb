from __future__ import annotations

import base64
import json

import pytest

from dgpu.protocol.canonical import canonical_bytes
from dgpu.protocol.envelope import ReplayCache, open_envelope, seal, signing_bytes
from dgpu.protocol.errors import (
    ExpiredError,
    MalformedError,
    OversizeError,
    RemoteProtocolError,
    ReplayError,
    SignatureError,
)
from dgpu.protocol.ids import MAX_OFFER_BYTES, MAX_OFFER_TTL_S
from dgpu.protocol.messages import GOSSIP_ADAPTER, TO_PROVIDER_NEGOTIATION, Offer

from .conftest import MALLORY, NOW, PROVIDER, RENTER, make_offer, make_request

NONCE = bytes(range(16))


def sealed_offer(offer: Offer | None = None, **kw: int) -> bytes:
    offer = offer or make_offer()
    return seal(offer, PROVIDER, nonce=NONCE, issued_at=kw.get("issued_at", NOW),
                expires_at=kw.get("expires_at", NOW + 600))


def open_offer(data: bytes, now: int = NOW + 1, **kw: object) -> Offer:
    return open_envelope(data, GOSSIP_ADAPTER, now=now, max_bytes=MAX_OFFER_BYTES,
                         max_ttl=MAX_OFFER_TTL_S, **kw).message  # type: ignore[arg-type]


def tamper(data: bytes, change: dict[str, object]) -> bytes:
    envelope = json.loads(data)
    envelope.update(change)
    return json.dumps(envelope).encode()


def test_round_trip_returns_message_and_signer() -> None:
    opened = open_envelope(sealed_offer(), GOSSIP_ADAPTER, now=NOW + 1, max_bytes=MAX_OFFER_BYTES,
                           max_ttl=MAX_OFFER_TTL_S)
    assert opened.message == make_offer()
    assert opened.signer == PROVIDER.public_key
    assert opened.nonce == NONCE.hex()


def test_non_canonical_spacing_and_key_order_still_verify() -> None:
    pretty = json.dumps(json.loads(sealed_offer()), indent=2, sort_keys=False).encode()
    assert open_offer(pretty) == make_offer()


def test_tampered_payload_is_refused() -> None:
    envelope = json.loads(sealed_offer())
    envelope["payload"]["price_per_minute"] = 1
    with pytest.raises(SignatureError):
        open_offer(json.dumps(envelope).encode())


def test_forged_signer_is_refused() -> None:
    # Mallory claims to be the provider but signs with her own key
    forged = seal(make_offer(), MALLORY, nonce=NONCE, issued_at=NOW, expires_at=NOW + 600)
    with pytest.raises(SignatureError):
        open_offer(tamper(forged, {"signer": PROVIDER.public_key.wallet}))
    # ...or signs honestly as herself: valid envelope, but not the expected signer
    with pytest.raises(SignatureError, match="expected"):
        open_offer(forged, expected_signer=PROVIDER.public_key)


def test_signature_from_another_domain_is_refused() -> None:
    envelope = json.loads(sealed_offer())
    body = {k: v for k, v in envelope.items() if k != "sig"}
    # a signature over the same body but in the "quote" domain must not pass as an offer
    wrong = PROVIDER.sign(signing_bytes("quote", body))
    envelope["sig"] = base64.b64encode(wrong).decode()
    with pytest.raises(SignatureError):
        open_offer(json.dumps(envelope).encode())
    # nor a bare signature of the canonical payload without the domain prefix
    envelope["sig"] = base64.b64encode(PROVIDER.sign(canonical_bytes(body))).decode()
    with pytest.raises(SignatureError):
        open_offer(json.dumps(envelope).encode())


def test_replay_is_refused_and_cache_unchanged_by_failures() -> None:
    cache = ReplayCache(capacity=10)
    data = seal(make_request(), RENTER, nonce=NONCE, issued_at=NOW, expires_at=NOW + 60)
    open_envelope(data, TO_PROVIDER_NEGOTIATION, now=NOW, max_bytes=65536, replay_cache=cache)
    with pytest.raises(ReplayError):
        open_envelope(data, TO_PROVIDER_NEGOTIATION, now=NOW + 1, max_bytes=65536, replay_cache=cache)
    bad = tamper(data, {"nonce": "ff" * 16})  # signature no longer verifies
    with pytest.raises(SignatureError):
        open_envelope(bad, TO_PROVIDER_NEGOTIATION, now=NOW, max_bytes=65536, replay_cache=cache)
    assert len(cache) == 1


def test_a_copy_of_a_verified_envelope_is_refused_before_its_signature_is_checked() -> None:
    """Gossip delivers an offer once per mesh peer and offer sync once more per neighbour: the
    copies are refused on the (signer, nonce) lookup, without the schema and signature checks."""
    cache = ReplayCache(capacity=10)
    data = seal(make_request(), RENTER, nonce=NONCE, issued_at=NOW, expires_at=NOW + 60)
    open_envelope(data, TO_PROVIDER_NEGOTIATION, now=NOW, max_bytes=65536, replay_cache=cache)
    garbled = tamper(data, {"payload": {"type": "job_request"}, "sig": "AAAA"})  # neither schema nor signature
    with pytest.raises(ReplayError):
        open_envelope(garbled, TO_PROVIDER_NEGOTIATION, now=NOW, max_bytes=65536, replay_cache=cache)
    # without the cache entry the same bytes fail their own checks: nothing was added for them
    with pytest.raises(RemoteProtocolError) as raised:
        open_envelope(garbled, TO_PROVIDER_NEGOTIATION, now=NOW, max_bytes=65536, replay_cache=ReplayCache(10))
    assert not isinstance(raised.value, ReplayError)
    assert len(cache) == 1


@pytest.mark.parametrize(("now", "issued", "expires"), [
    (NOW + 600, NOW, NOW + 600),      # at expiry
    (NOW + 10_000, NOW, NOW + 600),   # long after
    (NOW - 31, NOW, NOW + 600),        # issued more than the allowed skew in the future
])
def test_outside_validity_window_is_refused(now: int, issued: int, expires: int) -> None:
    with pytest.raises(ExpiredError):
        open_offer(sealed_offer(issued_at=issued, expires_at=expires), now=now)


def test_lifetime_longer_than_allowed_is_refused() -> None:
    with pytest.raises(ExpiredError, match="validity window"):
        open_offer(sealed_offer(expires_at=NOW + MAX_OFFER_TTL_S + 1))


def test_oversize_is_refused_before_decoding() -> None:
    with pytest.raises(OversizeError):
        open_offer(b"{" + b" " * MAX_OFFER_BYTES + b"}")


@pytest.mark.parametrize("change", [
    {"v": 2}, {"type": "quote"}, {"nonce": "xyz"}, {"issued_at": "1"}, {"signer": "not-a-wallet" * 3},
    {"sig": 5}, {"sig": "!!!"}, {"extra": 1}, {"payload": []},
])
def test_malformed_envelopes_are_refused(change: dict[str, object]) -> None:
    with pytest.raises((MalformedError, SignatureError)):
        open_offer(tamper(sealed_offer(), change))


def test_message_type_outside_the_direction_is_refused() -> None:
    data = seal(make_request(), RENTER, nonce=NONCE, issued_at=NOW, expires_at=NOW + 60)
    with pytest.raises(MalformedError):
        open_offer(data)


def test_payload_failing_schema_is_refused() -> None:
    envelope = json.loads(sealed_offer())
    envelope["payload"]["gpus"] = []
    with pytest.raises(MalformedError, match="gpus"):
        open_offer(json.dumps(envelope).encode())


def test_replay_cache_is_bounded_forgets_expired_and_fails_closed() -> None:
    cache = ReplayCache(capacity=2)
    key = RENTER.public_key
    cache.check_and_add(key, "a" * 32, expires_at=NOW + 10, now=NOW)
    cache.check_and_add(key, "b" * 32, expires_at=NOW + 20, now=NOW)
    with pytest.raises(ReplayError, match="full"):
        cache.check_and_add(key, "c" * 32, expires_at=NOW + 30, now=NOW)
    cache.check_and_add(key, "c" * 32, expires_at=NOW + 30, now=NOW + 10)  # "a" expired and was dropped
    assert len(cache) == 2
    with pytest.raises(ReplayError):
        cache.check_and_add(key, "b" * 32, expires_at=NOW + 20, now=NOW + 11)


def test_seal_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        seal(make_offer(), PROVIDER, nonce=b"short", issued_at=NOW, expires_at=NOW + 1)
    with pytest.raises(ValueError):
        seal(make_offer(), PROVIDER, nonce=NONCE, issued_at=NOW, expires_at=NOW)
