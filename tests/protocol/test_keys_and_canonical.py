from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dgpu.protocol.canonical import canonical_bytes, parse_json
from dgpu.protocol.errors import MalformedError, OversizeError
from dgpu.protocol.keys import PublicKey, SigningKey, b58decode, b58encode


@given(st.binary(max_size=64))
def test_base58_round_trips(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


def test_base58_known_values() -> None:
    # the Solana system program id is 32 zero bytes
    assert b58encode(bytes(32)) == "1" * 32
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"
    with pytest.raises(ValueError):
        b58decode("0OIl")


def test_signing_key_matches_solana_layout_and_never_prints_its_seed() -> None:
    seed = bytes(range(32))
    key = SigningKey(seed)
    layout = key.to_solana_keypair()
    assert len(layout) == 64 and bytes(layout[:32]) == seed
    assert SigningKey.from_solana_keypair(layout) == key
    assert seed.hex() not in repr(key) and str(seed) not in str(key)
    assert key.public_key.wallet in repr(key)
    with pytest.raises(ValueError, match="does not match"):
        SigningKey.from_solana_keypair(seed + bytes(32))
    with pytest.raises(ValueError):
        SigningKey.from_solana_keypair(seed)


def test_public_key_verifies_only_its_own_signatures() -> None:
    a, b = SigningKey(bytes([1]) * 32), SigningKey(bytes([2]) * 32)
    sig = a.sign(b"data")
    assert a.public_key.verify(sig, b"data")
    assert not a.public_key.verify(sig, b"datA")
    assert not b.public_key.verify(sig, b"data")
    assert not a.public_key.verify(sig[:63], b"data")
    assert PublicKey.from_wallet(a.public_key.wallet) == a.public_key
    with pytest.raises(ValueError):
        PublicKey.from_wallet("1" * 10)


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert canonical_bytes({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()


@pytest.mark.parametrize("value", [1.5, {"x": 0.0}, [float("nan")], {1: 2}, b"bytes"])
def test_canonical_bytes_refuse_non_integer_json(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_bytes(value)


@pytest.mark.parametrize("data", [
    b"{", b'{"a":1.0}', b'{"a":NaN}', b'{"a":1,"a":2}', b"\xff\xfe", b"[" * 100 + b"]" * 100,
])
def test_parse_json_refuses_malformed(data: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_json(data, max_bytes=1024)


def test_parse_json_checks_size_before_decoding() -> None:
    with pytest.raises(OversizeError) as info:
        parse_json(b"x" * 2000, max_bytes=1000)  # not JSON at all: the size check came first
    assert info.value.size == 2000 and info.value.limit == 1000


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=20))
def test_checked_encoding_is_the_canonical_encoding(value: object) -> None:
    from dgpu.protocol.canonical import canonical_bytes_of_checked

    assert canonical_bytes_of_checked(value) == canonical_bytes(value)
    assert parse_json(canonical_bytes(value), max_bytes=1 << 20) == value


@pytest.mark.parametrize("value", [{"a": [1, {"b": 1.5}]}, (1, 2.0), {"k": {1: 2}}, [object()]])
def test_canonical_bytes_refuse_floats_and_non_json_at_any_depth(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_bytes(value)
