"""A node's libp2p peer ID and its wallet are one Ed25519 key: the conversion both ways, pure.

A libp2p peer ID of an Ed25519 key is the identity multihash (code 0x00, length 36) of the key's
protobuf ``PublicKey`` message (field 1 ``KeyType`` = 1 for Ed25519, field 2 ``Data`` = the 32
raw bytes), in base58: the familiar ``12D3KooW...`` strings. Computed here without libp2p so
the node's services can map a stream's peer to a wallet (and back) without loading it.
"""

from __future__ import annotations

from .keys import PublicKey, b58decode, b58encode

__all__ = ["peer_id_of_wallet", "wallet_of_peer"]

#: protobuf PublicKey{Type: Ed25519, Data: <32 bytes>} header, then identity multihash header
_KEY_HEADER = bytes((0x08, 0x01, 0x12, 0x20))
_PEER_ID_HEADER = bytes((0x00, len(_KEY_HEADER) + 32)) + _KEY_HEADER


def peer_id_of_wallet(wallet: str) -> str:
    """The libp2p peer ID of a wallet (the same Ed25519 key); ValueError if not a wallet."""
    return b58encode(_PEER_ID_HEADER + PublicKey.from_wallet(wallet).raw)


def wallet_of_peer(peer: str) -> str | None:
    """The wallet of an Ed25519 peer ID, or None for other key types / malformed IDs."""
    try:
        raw = b58decode(peer)
    except ValueError:
        return None
    if len(raw) != len(_PEER_ID_HEADER) + 32 or not raw.startswith(_PEER_ID_HEADER):
        return None
    return PublicKey(raw[len(_PEER_ID_HEADER):]).wallet
