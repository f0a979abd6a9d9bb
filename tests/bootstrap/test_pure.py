"""Unit tests of the bootstrap's pure pieces: rate limiter, challenges, tokens, keys, links."""

from __future__ import annotations

import base58
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from dgpu.bootstrap.auth import ChallengeBook, TokenIssuer, decode_wallet, verify_wallet_signature
from dgpu.bootstrap.config import wallet_of
from dgpu.bootstrap.errors import BadRequest, Forbidden, RateLimited, Unauthorized
from dgpu.bootstrap.ratelimit import TokenBucketLimiter
from dgpu.bootstrap.storage import LinkSigner
from dgpu.node.adapters.storage_names import validate_bucket, validate_cid, validate_key
from dgpu.node.adapters.tokens import TokenVerifier
from dgpu.protocol.auth import Role, signing_bytes

# -- rate limiter ---------------------------------------------------------------------------------


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    lim = TokenBucketLimiter(rate=2.0, burst=3, max_keys=10)
    assert [lim.acquire("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.acquire("a", 100.0) == pytest.approx(0.5)
    assert lim.acquire("a", 100.5) == 0.0  # one token refilled
    assert lim.acquire("b", 100.5) == 0.0  # other keys independent
    assert TokenBucketLimiter.retry_after_header(0.01) == 1
    assert TokenBucketLimiter.retry_after_header(2.3) == 3


def test_bucket_memory_is_bounded_lru() -> None:
    lim = TokenBucketLimiter(rate=1.0, burst=1, max_keys=3)
    for i in range(100):
        lim.acquire(f"k{i}", 0.0)
    assert len(lim) == 3
    lim.acquire("hot", 0.0)
    lim.acquire("k98", 0.0)  # touched, so not the one evicted next
    lim.acquire("new", 0.0)
    assert lim.acquire("k98", 0.0) > 0  # still remembered: empty bucket


@given(st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=50))
def test_bucket_never_grants_more_than_burst_plus_refill(times: list[float]) -> None:
    lim = TokenBucketLimiter(rate=1.0, burst=5, max_keys=1)
    times = sorted(times)
    granted = sum(1 for t in times if lim.acquire("x", t) == 0.0)
    assert granted <= 5 + (times[-1] - times[0]) * 1.0 + 1e-9


# -- challenges and signatures --------------------------------------------------------------------


def _book() -> ChallengeBook:
    return ChallengeBook(ttl=60, max_pending=3, issuer="iss", audience="aud")


def test_challenge_single_use_and_expiring() -> None:
    key = Ed25519PrivateKey.generate()
    book = _book()
    ch = book.issue(wallet_of(key), "login", None, now=1000.0)
    assert book.consume(ch.nonce, 1059.0) == ch
    with pytest.raises(Unauthorized) as err:
        book.consume(ch.nonce, 1001.0)
    assert err.value.code == "challenge_unknown"
    ch2 = book.issue(wallet_of(key), "login", None, now=1000.0)
    with pytest.raises(Unauthorized) as err:
        book.consume(ch2.nonce, 1060.0)
    assert err.value.code == "challenge_expired"


def test_challenge_book_is_bounded() -> None:
    book = _book()
    wallets = [wallet_of(Ed25519PrivateKey.generate()) for _ in range(4)]
    for w in wallets[:3]:
        book.issue(w, "login", None, now=0.0)
    with pytest.raises(RateLimited):
        book.issue(wallets[3], "login", None, now=1.0)
    book.issue(wallets[3], "login", None, now=61.0)  # expired ones are purged
    assert len(book) == 1


def test_signature_is_domain_separated() -> None:
    key = Ed25519PrivateKey.generate()
    ch = _book().issue(wallet_of(key), "login", None, now=0.0, nonce="n1")
    assert signing_bytes(ch) == b"dgpu/1/login\0" + ch.canonical()
    assert ch.canonical() == (
        b'{"action":"login","audience":"aud","expires_at":60,"issued_at":0,"issuer":"iss",'
        b'"nonce":"n1","role":null,"wallet":"' + wallet_of(key).encode() + b'"}'
    )
    verify_wallet_signature(ch, base58.b58encode(key.sign(signing_bytes(ch))).decode())
    for bad in (key.sign(ch.canonical()), Ed25519PrivateKey.generate().sign(signing_bytes(ch))):
        with pytest.raises(Unauthorized):
            verify_wallet_signature(ch, base58.b58encode(bad).decode())
    with pytest.raises(Unauthorized):
        verify_wallet_signature(ch, "0OIl")  # not base58


@pytest.mark.parametrize("wallet", ["", "abc", "0" * 44, base58.b58encode(b"x" * 31).decode()])
def test_decode_wallet_refuses_non_keys(wallet: str) -> None:
    with pytest.raises(BadRequest):
        decode_wallet(wallet)


# -- tokens ---------------------------------------------------------------------------------------


def test_token_roundtrip_and_checks() -> None:
    key = Ed25519PrivateKey.generate()
    issuer = TokenIssuer(key, "iss", "aud", ttl=100)
    token, exp = issuer.issue("W", Role.PROVIDER, "fam1", now=1000.0)
    assert exp == 1100
    verifier = TokenVerifier.from_jwks(issuer.jwks(), "iss", "aud")
    claims = verifier.verify(token, 1099.0)
    assert (claims.wallet, claims.role, claims.family_id) == ("W", Role.PROVIDER, "fam1")
    with pytest.raises(Unauthorized) as err:
        verifier.verify(token, 1100.0)
    assert err.value.code == "token_expired"
    for wrong in (
        TokenVerifier.from_jwks(issuer.jwks(), "other", "aud"),
        TokenVerifier.from_jwks(issuer.jwks(), "iss", "other"),
        TokenIssuer(Ed25519PrivateKey.generate(), "iss", "aud", 100).verifier(),
    ):
        with pytest.raises(Unauthorized):
            wrong.verify(token, 1000.0)
    with pytest.raises(Unauthorized):
        verifier.verify(token, 990.0)  # before iat/nbf
    with pytest.raises(Unauthorized):
        verifier.verify("x" * 5000, 1000.0)


# -- storage rules --------------------------------------------------------------------------------


def test_link_signer() -> None:
    links = LinkSigner(b"k" * 32)
    cid = "sha256-" + "a" * 64
    sig = links.sign(cid, 500)
    links.check(cid, 500, sig, now=499.0)
    cases = [(cid, 501, sig, 0.0), ("sha256-" + "b" * 64, 500, sig, 0.0), (cid, 500, sig, 500.0)]
    for c, e, s, now in cases:
        with pytest.raises(Forbidden):
            links.check(c, e, s, now)
    with pytest.raises(ValueError):
        LinkSigner(b"short")


@pytest.mark.parametrize(
    "key",
    ["", "..", "a/../b", "./a", "a/.", "/etc/passwd", "a//b", "a\0b", "a\\b", "C:x", "a\nb",
     "k" * 1025, "é" * 513],
)
def test_bad_keys(key: str) -> None:
    with pytest.raises(BadRequest):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "a/b/c.txt", "..a", "a..", "dir/.hidden", "k" * 1024])
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key


def test_cid_and_bucket_rules() -> None:
    validate_cid("sha256-" + "0" * 64)
    for bad in ("sha256-" + "A" * 64, "sha256-" + "0" * 63, "md5-" + "0" * 64, ""):
        with pytest.raises(BadRequest):
            validate_cid(bad)
    validate_bucket("models")
    for bad in ("ab", "A_B", "-ab", "a..b", "x" * 64, "a/b"):
        with pytest.raises(BadRequest):
            validate_bucket(bad)
