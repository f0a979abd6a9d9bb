"""Signed envelopes: how every message travels.

Wire form (canonical JSON)::

    {"v": 1, "type": "<message type>", "signer": "<wallet>", "nonce": "<32 hex>",
     "issued_at": <unix s>, "expires_at": <unix s>, "payload": {...}, "sig": "<base64>"}

The signature is Ed25519 over ``b"dgpu/1/" + type + b"\\0" + canonical(envelope without sig)``,
so it can never be mistaken for a Solana transaction, a libp2p record or another message type.
:func:`open_envelope` checks, in order: size (before decoding), JSON, envelope schema, version,
(when given a cache) a copy of a message already verified, payload schema and type, signature,
validity window at ``now``, and (when given a cache) replay.
Nothing here reads a clock or draws randomness: ``now`` and ``nonce`` are arguments.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from .canonical import JsonValue, canonical_bytes, canonical_bytes_of_checked, parse_json
from .errors import ExpiredError, MalformedError, ReplayError, SignatureError
from .ids import DOMAIN_PREFIX, KNOWN_WIRE_VERSIONS, MAX_ENVELOPE_TTL_S, MAX_FRAME_BYTES, WIRE_VERSION
from .keys import PublicKey, SigningKey
from .messages import _Model

__all__ = [
    "Opened",
    "ReplayCache",
    "open_envelope",
    "seal",
    "sign_detached",
    "signing_bytes",
    "verify_detached",
]

M = TypeVar("M")

#: a peer's clock may run this far ahead of ours before its messages count as "from the future"
CLOCK_SKEW_S = 30
_ENVELOPE_KEYS = frozenset({"v", "type", "signer", "nonce", "issued_at", "expires_at", "payload", "sig"})


def signing_bytes(message_type: str, body: JsonValue) -> bytes:
    """The exact bytes a signature covers: domain, type, NUL, canonical body."""
    return DOMAIN_PREFIX + message_type.encode("ascii") + b"\0" + canonical_bytes(body)


def _signing_bytes_of_checked(message_type: str, body: JsonValue) -> bytes:
    """:func:`signing_bytes` of a parsed envelope or a model's dump (see ``canonical_bytes_of_checked``)."""
    return DOMAIN_PREFIX + message_type.encode("ascii") + b"\0" + canonical_bytes_of_checked(body)


def _type_of(message: BaseModel) -> str:
    message_type = getattr(message, "type", None)
    if not isinstance(message_type, str):
        raise TypeError(f"{type(message).__name__} has no 'type' discriminator")
    return message_type


def _dump(message: BaseModel) -> JsonValue:
    """A message's JSON; one of another model than the protocol's is checked for floats here."""
    data = message.model_dump(mode="json")
    if not isinstance(message, _Model):
        canonical_bytes(data)  # raises TypeError on a float
    return data


def sign_detached(message: BaseModel, key: SigningKey) -> str:
    """Base64 signature of one message on its own (used for the Agreement's terms)."""
    sig = key.sign(_signing_bytes_of_checked(_type_of(message), _dump(message)))
    return base64.b64encode(sig).decode("ascii")


def verify_detached(message: BaseModel, signature_b64: str, signer: PublicKey) -> None:
    """Raise :class:`SignatureError` unless ``signer`` signed ``message`` (see :func:`sign_detached`)."""
    sig = _b64(signature_b64)
    if not signer.verify(sig, _signing_bytes_of_checked(_type_of(message), _dump(message))):
        raise SignatureError(f"{_type_of(message)} signature does not verify for {signer.wallet}")


def seal(message: BaseModel, key: SigningKey, *, nonce: bytes, issued_at: int, expires_at: int) -> bytes:
    """Sign ``message`` into wire bytes. ``nonce`` is 16 random bytes chosen by the caller."""
    if len(nonce) != 16:
        raise ValueError("the nonce is 16 bytes")
    if expires_at <= issued_at:
        raise ValueError("expires_at must be after issued_at")
    message_type = _type_of(message)
    body: dict[str, Any] = {
        "v": WIRE_VERSION,
        "type": message_type,
        "signer": key.public_key.wallet,
        "nonce": nonce.hex(),
        "issued_at": issued_at,
        "expires_at": expires_at,
        "payload": _dump(message),
    }
    sig = key.sign(_signing_bytes_of_checked(message_type, body))
    return canonical_bytes_of_checked({**body, "sig": base64.b64encode(sig).decode("ascii")})


@dataclass(frozen=True, slots=True)
class Opened(Generic[M]):
    """A verified message and who signed it."""

    signer: PublicKey
    message: M
    nonce: str
    issued_at: int
    expires_at: int


class ReplayCache:
    """Remembers (signer, nonce) until the envelope expires; bounded, and fails closed when full.

    Memory is bounded by ``capacity``; since every envelope's lifetime is capped at ``max_ttl``,
    an entry can be forgotten once expired — a replay of it would be refused as expired anyway.
    When full of live entries it refuses new messages rather than forget one that may be replayed.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._seen: dict[tuple[bytes, str], int] = {}
        self._by_expiry: list[tuple[int, bytes, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def purge(self, now: int) -> None:
        """Forget the entries that expired by ``now``."""
        while self._by_expiry and self._by_expiry[0][0] <= now:
            expiry, signer, nonce = heapq.heappop(self._by_expiry)
            if self._seen.get((signer, nonce)) == expiry:
                del self._seen[(signer, nonce)]

    def __contains__(self, signer_and_nonce: tuple[PublicKey, str]) -> bool:
        """Whether this (signer, nonce) was recorded and has not expired (a lookup: adds nothing)."""
        signer, nonce = signer_and_nonce
        return (signer.raw, nonce) in self._seen

    def check_and_add(self, signer: PublicKey, nonce: str, expires_at: int, now: int) -> None:
        """Record the pair, or raise :class:`ReplayError` if seen before or if full."""
        self.purge(now)
        key = (signer.raw, nonce)
        if key in self._seen:
            raise ReplayError(f"replayed message (nonce {nonce[:8]}…) from {signer.wallet}")
        if len(self._seen) >= self.capacity:
            raise ReplayError("replay cache is full; refusing rather than risking a replay")
        self._seen[key] = expires_at
        heapq.heappush(self._by_expiry, (expires_at, signer.raw, nonce))


def _b64(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) > 200:
        raise MalformedError("signature must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedError("signature is not valid base64") from None


def open_envelope(
    data: bytes,
    adapter: TypeAdapter[M],
    *,
    now: int,
    max_bytes: int = MAX_FRAME_BYTES,
    replay_cache: ReplayCache | None = None,
    max_ttl: int = MAX_ENVELOPE_TTL_S,
    expected_signer: PublicKey | None = None,
) -> Opened[M]:
    """Decode and verify wire bytes; raises a :class:`~dgpu.protocol.errors.RemoteProtocolError`.

    ``adapter`` decides which message types are acceptable in this direction (the adapters in
    :mod:`dgpu.protocol`: ``TO_PROVIDER_NEGOTIATION``, ``GOSSIP_ADAPTER``, ...). ``max_bytes``
    bounds the input before it is parsed: the default suits stream frames; gossiped offers use
    ``MAX_OFFER_BYTES``. A failed check leaves ``replay_cache`` unchanged.
    """
    envelope = parse_json(data, max_bytes=max_bytes)
    if not isinstance(envelope, dict) or set(envelope) != _ENVELOPE_KEYS:
        raise MalformedError("not a dgpu envelope")
    version = envelope["v"]
    if version not in KNOWN_WIRE_VERSIONS:
        raise MalformedError(f"unknown envelope version {version!r}")
    message_type, signer_text, nonce = envelope["type"], envelope["signer"], envelope["nonce"]
    issued_at, expires_at = envelope["issued_at"], envelope["expires_at"]
    if not (isinstance(message_type, str) and isinstance(signer_text, str) and isinstance(nonce, str)):
        raise MalformedError("type, signer and nonce are strings")
    if len(nonce) != 32 or any(c not in "0123456789abcdef" for c in nonce):
        raise MalformedError("nonce is 32 lowercase hex characters")
    if not (type(issued_at) is int and type(expires_at) is int):
        raise MalformedError("issued_at and expires_at are integers")
    payload = envelope["payload"]
    if not isinstance(payload, dict) or payload.get("type") != message_type:
        raise MalformedError("payload type does not match the envelope type")
    try:
        signer = PublicKey.from_wallet(signer_text)
    except ValueError:
        raise MalformedError("signer is not a wallet address") from None
    if replay_cache is not None:
        replay_cache.purge(now)
        if (signer, nonce) in replay_cache:
            # a copy of one already verified (gossip from each mesh peer, offer sync): refused
            # before the schema and signature checks, which were most of a node's gossip CPU
            raise ReplayError(f"replayed message (nonce {nonce[:8]}…) from {signer.wallet}")
    try:
        message = adapter.validate_python(payload)
    except ValidationError as exc:
        raise MalformedError(f"{message_type}: {_summarise(exc)}") from None

    body = {k: v for k, v in envelope.items() if k != "sig"}
    if not signer.verify(_b64(envelope["sig"]), _signing_bytes_of_checked(message_type, body)):
        raise SignatureError(f"{message_type} signature does not verify for {signer.wallet}")
    if expected_signer is not None and signer != expected_signer:
        raise SignatureError(f"{message_type} signed by {signer.wallet}, expected {expected_signer.wallet}")
    if expires_at <= issued_at or expires_at - issued_at > max_ttl:
        raise ExpiredError(f"{message_type} validity window must be 1..{max_ttl} s")
    if issued_at > now + CLOCK_SKEW_S:
        raise ExpiredError(f"{message_type} issued in the future")
    if now >= expires_at:
        raise ExpiredError(f"{message_type} expired")
    if replay_cache is not None:
        replay_cache.check_and_add(signer, nonce, expires_at, now)
    return Opened(signer=signer, message=message, nonce=nonce, issued_at=issued_at,
                  expires_at=expires_at)


def _summarise(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"{exc.error_count()} error(s), first at {loc or '<root>'}: {first['msg']}"[:300]
