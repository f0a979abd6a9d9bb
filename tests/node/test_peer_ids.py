"""The pure peer ID <-> wallet mapping agrees with libp2p's own derivation."""

from __future__ import annotations

import secrets

from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID

from dgpu.protocol.keys import SigningKey
from dgpu.protocol.peers import peer_id_of_wallet, wallet_of_peer


def test_peer_ids_match_libp2p_both_ways() -> None:
    for _ in range(20):
        key = SigningKey(secrets.token_bytes(32)).public_key
        expected = str(ID.from_pubkey(Ed25519PublicKey.from_bytes(key.raw)))
        assert peer_id_of_wallet(key.wallet) == expected
        assert wallet_of_peer(expected) == key.wallet


def test_other_peer_ids_have_no_wallet() -> None:
    rsa_like = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"  # a sha256 multihash id (RSA keys)
    for text in (rsa_like, "", "not base58 0OIl", "12D3KooW"):
        assert wallet_of_peer(text) is None
