"""Ed25519 keys, wallet addresses (base58) and the Solana CLI keypair layout.

A node has one key: its libp2p identity, its Solana wallet and the signer of every protocol
message. This module is pure computation; reading and writing key files is the node's keystore.
The private half never appears in ``repr``, ``str`` or any error message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["PublicKey", "SigningKey", "b58decode", "b58encode"]

_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Bitcoin/Solana base58 (leading zero bytes become ``1``)."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    return (b"1" * zeros + bytes(reversed(out))).decode("ascii")


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises ``ValueError`` on a character outside the alphabet."""
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

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        pub = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        object.__setattr__(
            self, "public_key", PublicKey(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))
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
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self.public_key.wallet})"

    __str__ = __repr__
