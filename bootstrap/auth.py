"""Wallet-signed login, JWT access tokens, rotating refresh tokens and roles.

Theory of operation:
1. ``POST /auth/challenge {wallet, action}`` → the node issues a single-use nonce that expires
   after ``challenge_ttl_s`` and returns the canonical challenge (sorted-key compact JSON).
2. The wallet signs ``DOMAIN[action] + canonical challenge bytes`` with its Ed25519 key (the
   wallet address *is* the base58 public key); the domain prefix (``b"dgpu/1/login\\0"`` or
   ``b"dgpu/1/register\\0"``) keeps the signature from being valid as anything else.
3. ``POST /auth/login {wallet, nonce, signature}`` consumes the nonce whatever the outcome (so
   a signature can be tried once), verifies it, and answers a short-lived JWT (EdDSA, signed by
   the bootstrap node's key, ``kid`` = the node's base58 public key) plus a refresh token.
4. A refresh token is an opaque random string, stored hashed, usable once: using it returns a
   new pair in the same *family*; presenting a used one again means it was stolen or replayed,
   and revokes the whole family. Logout revokes the family. Access tokens carry the family id
   (``fam``) so this node refuses them as soon as the family is revoked; other nodes, which
   check only the signature, rely on the short expiry.

The challenge, its signing bytes, roles and claims are pure types in ``dgpu.protocol.auth``;
tokens are checked by ``dgpu.node.adapters.tokens.TokenVerifier`` (nodes check them the same
way). ``ChallengeBook`` and ``TokenIssuer`` take the time as an argument; ``AuthService`` adds
the database and the clock.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import base58
import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dgpu.node.adapters.tokens import TokenVerifier
from dgpu.protocol.auth import AccessClaims, Action, Challenge, Role, signing_bytes

from .config import BootstrapHttpConfig
from .db import AsyncDB, RotateOutcome
from .errors import BadRequest, Forbidden, RateLimited, Unauthorized
from .metrics import Metrics

__all__ = [
    "AuthService",
    "ChallengeBook",
    "TokenIssuer",
    "TokenPair",
    "decode_wallet",
]


# Bounds the outstanding challenges of one wallet (older ones are dropped).
_MAX_CHALLENGES_PER_WALLET = 4
_REFRESH_PREFIX = "rt_"
# A refresh token is "rt_" + 43 base64url chars; anything much longer is refused unread.
_MAX_REFRESH_LEN = 128


def decode_wallet(wallet: str) -> Ed25519PublicKey:
    """The Ed25519 public key of a base58 Solana address; BadRequest if it is not one."""
    if not 32 <= len(wallet) <= 44:
        raise BadRequest("wallet is not a base58 Solana address", code="bad_wallet")
    try:
        raw = base58.b58decode(wallet)
    except ValueError:
        raise BadRequest("wallet is not a base58 Solana address", code="bad_wallet") from None
    if len(raw) != 32:
        raise BadRequest("wallet is not a 32-byte public key", code="bad_wallet")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise BadRequest("wallet is not an Ed25519 public key", code="bad_wallet") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ChallengeBook:
    """Outstanding challenges in memory, single-use, expiring, bounded.

    Lost on restart by design: a challenge lives ``ttl`` seconds, so the client just asks again.
    """

    def __init__(self, ttl: int, max_pending: int, issuer: str, audience: str) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self.issuer = issuer
        self.audience = audience
        self._by_nonce: OrderedDict[str, Challenge] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._by_nonce)

    def _purge_expired(self, now: float) -> None:
        while self._by_nonce:
            nonce, oldest = next(iter(self._by_nonce.items()))
            if oldest.expires_at > now:
                break
            del self._by_nonce[nonce]

    def issue(
        self, wallet: str, action: Action, role: str | None, now: float, nonce: str | None = None
    ) -> Challenge:
        self._purge_expired(now)
        mine = [n for n, c in self._by_nonce.items() if c.wallet == wallet]
        for n in mine[: max(0, len(mine) - _MAX_CHALLENGES_PER_WALLET + 1)]:
            del self._by_nonce[n]
        if len(self._by_nonce) >= self.max_pending:
            raise RateLimited(
                "too many outstanding challenges, try again later",
                retry_after=self.ttl,
                code="too_many_challenges",
            )
        issued = int(now)
        challenge = Challenge(
            wallet=wallet,
            action=action,
            role=role,
            nonce=nonce if nonce is not None else secrets.token_hex(16),
            issued_at=issued,
            expires_at=issued + self.ttl,
            issuer=self.issuer,
            audience=self.audience,
        )
        self._by_nonce[challenge.nonce] = challenge
        return challenge

    def consume(self, nonce: str, now: float) -> Challenge:
        """Remove and return the challenge; Unauthorized if unknown, used or expired."""
        challenge = self._by_nonce.pop(nonce, None)
        if challenge is None:
            raise Unauthorized("unknown or already used challenge", code="challenge_unknown")
        if now >= challenge.expires_at:
            raise Unauthorized("the challenge has expired", code="challenge_expired")
        return challenge


def verify_wallet_signature(challenge: Challenge, signature_b58: str) -> None:
    """Unauthorized unless ``signature_b58`` is the wallet's signature over the challenge."""
    public = decode_wallet(challenge.wallet)
    try:
        signature = base58.b58decode(signature_b58)
    except ValueError:
        raise Unauthorized("signature is not base58", code="bad_signature") from None
    if len(signature) != 64:
        raise Unauthorized("signature is not 64 bytes", code="bad_signature")
    try:
        public.verify(signature, signing_bytes(challenge))
    except InvalidSignature:
        raise Unauthorized("signature does not verify", code="bad_signature") from None


class TokenIssuer:
    """Signs access tokens with the bootstrap node's Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey, issuer: str, audience: str, ttl: int) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = base58.b58encode(raw).decode("ascii")
        self._public_raw = raw

    def issue(self, wallet: str, role: Role, family_id: str, now: float) -> tuple[str, int]:
        iat = int(now)
        exp = iat + self.ttl
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": wallet,
            "role": role.value,
            "fam": family_id,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})
        return token, exp

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(self._public_raw),
                    "kid": self.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                }
            ]
        }

    def verifier(self, leeway: int = 0) -> TokenVerifier:
        return TokenVerifier({self.kid: self._key.public_key()}, self.issuer, self.audience, leeway)


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    access_expires_at: int
    refresh_token: str
    refresh_expires_at: int
    role: Role
    wallet: str


def _hash_refresh(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def _new_refresh() -> str:
    return _REFRESH_PREFIX + secrets.token_urlsafe(32)


class AuthService:
    """The auth use cases over the database, the challenge book and the token issuer."""

    def __init__(
        self,
        config: BootstrapHttpConfig,
        db: AsyncDB,
        issuer: TokenIssuer,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.db = db
        self.issuer = issuer
        self.verifier = issuer.verifier()
        self.metrics = metrics
        self.clock = clock
        self.challenges = ChallengeBook(
            config.challenge_ttl_s, config.max_pending_challenges, config.issuer, config.audience
        )

    def challenge(self, wallet: str, action: Action, role: str | None) -> Challenge:
        decode_wallet(wallet)
        if action == "register":
            if role not in (Role.RENTER.value, Role.PROVIDER.value):
                raise BadRequest("role must be 'renter' or 'provider'", code="bad_role")
        elif role is not None:
            raise BadRequest("role is only given when registering", code="bad_role")
        return self.challenges.issue(wallet, action, role, self.clock())

    def _answer(self, wallet: str, nonce: str, signature: str, action: Action) -> Challenge:
        decode_wallet(wallet)
        challenge = self.challenges.consume(nonce, self.clock())
        if challenge.wallet != wallet or challenge.action != action:
            raise Unauthorized("challenge was issued for another request", code="bad_challenge")
        verify_wallet_signature(challenge, signature)
        return challenge

    async def _role_of(self, wallet: str) -> Role | None:
        if wallet in self.config.admin_wallets:
            return Role.ADMIN
        stored = await self.db.run(self.db.sync.get_role, wallet)
        return None if stored is None else Role(stored)

    async def register(self, wallet: str, nonce: str, signature: str) -> Role:
        try:
            challenge = self._answer(wallet, nonce, signature, "register")
        except Unauthorized as exc:
            self.metrics.registrations.labels(exc.code).inc()
            raise
        if wallet in self.config.admin_wallets:
            self.metrics.registrations.labels("admin").inc()
            raise Forbidden("admin wallets are configured, not registered", code="is_admin")
        assert challenge.role is not None  # checked when the challenge was issued
        await self.db.run(self.db.sync.set_role, wallet, challenge.role, self.clock())
        self.metrics.registrations.labels("ok").inc()
        return Role(challenge.role)

    async def login(self, wallet: str, nonce: str, signature: str) -> TokenPair:
        try:
            self._answer(wallet, nonce, signature, "login")
        except Unauthorized as exc:
            self.metrics.logins.labels(exc.code).inc()
            raise
        role = await self._role_of(wallet)
        if role is None:
            self.metrics.logins.labels("not_registered").inc()
            raise Forbidden("register a role before logging in", code="not_registered")
        now = self.clock()
        refresh = _new_refresh()
        refresh_exp = int(now) + self.config.refresh_ttl_s
        family = await self.db.run(
            self.db.sync.new_family, wallet, _hash_refresh(refresh), now, refresh_exp
        )
        access, access_exp = self.issuer.issue(wallet, role, family, now)
        self.metrics.logins.labels("ok").inc()
        return TokenPair(access, access_exp, refresh, refresh_exp, role, wallet)

    async def refresh(self, refresh_token: str) -> TokenPair:
        if len(refresh_token) > _MAX_REFRESH_LEN or not refresh_token.startswith(_REFRESH_PREFIX):
            self.metrics.refreshes.labels("unknown").inc()
            raise Unauthorized("unknown refresh token", code="refresh_invalid")
        now = self.clock()
        new = _new_refresh()
        new_exp = int(now) + self.config.refresh_ttl_s
        outcome, wallet, family = await self.db.run(
            self.db.sync.rotate, _hash_refresh(refresh_token), _hash_refresh(new), now, new_exp
        )
        self.metrics.refreshes.labels(outcome.value).inc()
        if outcome is RotateOutcome.REUSED:
            raise Unauthorized(
                "refresh token reused: every token of this session is revoked",
                code="refresh_reused",
            )
        if outcome is RotateOutcome.EXPIRED:
            raise Unauthorized("refresh token expired", code="refresh_expired")
        if outcome is RotateOutcome.REVOKED:
            raise Unauthorized("refresh token revoked", code="refresh_revoked")
        if outcome is not RotateOutcome.ROTATED or wallet is None or family is None:
            raise Unauthorized("unknown refresh token", code="refresh_invalid")
        role = await self._role_of(wallet)
        if role is None:  # the role was removed since login
            await self.db.run(self.db.sync.revoke_family, family, now, "no_role")
            raise Forbidden("wallet has no role", code="not_registered")
        access, access_exp = self.issuer.issue(wallet, role, family, now)
        return TokenPair(access, access_exp, new, new_exp, role, wallet)

    async def logout(self, refresh_token: str) -> None:
        if len(refresh_token) > _MAX_REFRESH_LEN:
            raise Unauthorized("unknown refresh token", code="refresh_invalid")
        found = await self.db.run(
            self.db.sync.revoke_token_family, _hash_refresh(refresh_token), self.clock(), "logout"
        )
        if not found:
            raise Unauthorized("unknown refresh token", code="refresh_invalid")

    async def authenticate(self, token: str) -> AccessClaims:
        claims = self.verifier.verify(token, self.clock())
        if not await self.db.run(self.db.sync.family_active, claims.family_id):
            raise Unauthorized("token revoked", code="token_revoked")
        return claims

    async def revoke_wallet(self, wallet: str) -> int:
        return await self.db.run(self.db.sync.revoke_wallet, wallet, self.clock(), "admin")
