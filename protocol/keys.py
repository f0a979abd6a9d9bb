"""Ed25519 keys, wallet addresses (base58) and the Solana CLI keypair layout.

A node has one key: its libp2p identity, its Solana wallet and the signer of every protocol
message. This module is pure computation; reading and writing key files is the node's keystore.
The private half never appears in ``repr``, ``str`` or any error message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["PublicKey", "SigningKey", "b58decode", "b58encode"]

_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Bitcoin/Solana base58 (leading zero bytes become ``1``)."""
    return _b58encode_key(data) if len(data) == 32 else _b58encode(data)


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises ``ValueError`` on a character outside the alphabet."""
    return _b58decode_key(text) if 32 <= len(text) <= 44 else _b58decode(text)


def _b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    return (b"1" * zeros + bytes(reversed(out))).decode("ascii")


def _b58decode(text: str) -> bytes:
    raw = text.encode("ascii", errors="strict") if text.isascii() else None
    if raw is None:
        raise ValueError("base58 text must be ASCII")
    n = 0
    for c in raw:
        digit = _B58_INDEX.get(c)
        if digit is None:
            raise ValueError("invalid base58 character")
        n = n * 58 + digit
    zeros = len(raw) - len(raw.lstrip(b"1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


# every message names wallets that its validation decodes again and again (22 times in one
# negotiation): keys are few, so their conversions are remembered (bounded; errors are not)
_b58encode_key = lru_cache(maxsize=4096)(_b58encode)
_b58decode_key = lru_cache(maxsize=4096)(_b58decode)


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key; its base58 form is the Solana wallet address."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")

    @classmethod
    def from_wallet(cls, wallet: str) -> PublicKey:
        """Parse a base58 wallet address; ``ValueError`` if it is not a 32-byte key."""
        if not 32 <= len(wallet) <= 44:
            raise ValueError("a wallet address is 32 to 44 base58 characters")
        return cls(b58decode(wallet))

    @property
    def wallet(self) -> str:
        return b58encode(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``data``."""
        if len(signature) != 64:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __str__(self) -> str:
        return self.wallet


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key (its 32-byte seed). Never printed."""

    seed: bytes = field(repr=False)
    public_key: PublicKey = field(init=False)
    #: the parsed key, kept: parsing it again for every signature cost as much as signing
    _private: Ed25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        private = Ed25519PrivateKey.from_private_bytes(self.seed)
        object.__setattr__(self, "_private", private)
        object.__setattr__(
            self, "public_key", PublicKey(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        )

    @classmethod
    def from_solana_keypair(cls, keypair: bytes | list[int]) -> SigningKey:
        """From the Solana CLI layout: 64 bytes, seed then public key (checked to match)."""
        raw = bytes(keypair)
        if len(raw) != 64:
            raise ValueError("a Solana keypair is 64 bytes")
        key = cls(raw[:32])
        if key.public_key.raw != raw[32:]:
            raise ValueError("the keypair's public half does not match its seed")
        return key

    def to_solana_keypair(self) -> list[int]:
        """The Solana CLI layout (a JSON array of 64 integers when dumped)."""
        return list(self.seed + self.public_key.raw)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self.public_key.wallet})"

    __str__ = __repr__
