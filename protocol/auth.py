"""Wallet-signed login: roles, the challenge a wallet signs, and the auth wire models.

Pure: the bootstrap node issues and checks challenges (with its clock and randomness), a node
or the CLI checks a challenge before signing it and parses the answers; both use these types.
A wallet signs ``DOMAINS[action] + Challenge.canonical()``; the domain prefix keeps the
signature from being valid as anything else (a Solana transaction, a dGPU message).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DOMAINS",
    "AccessClaims",
    "Action",
    "Challenge",
    "ChallengeIn",
    "ChallengeOut",
    "MeOut",
    "RefreshIn",
    "RegisterOut",
    "Role",
    "SignedIn",
    "TokenOut",
    "signing_bytes",
]


class Role(StrEnum):
    RENTER = "renter"
    PROVIDER = "provider"
    ADMIN = "admin"  # only from the bootstrap's configuration, never self-registered


Action = Literal["login", "register"]

DOMAINS: Mapping[str, bytes] = {"login": b"dgpu/1/login\0", "register": b"dgpu/1/register\0"}


@dataclass(frozen=True, slots=True)
class Challenge:
    wallet: str
    action: Action
    role: str | None  # the role being registered (register only)
    nonce: str
    issued_at: int
    expires_at: int
    issuer: str
    audience: str

    def canonical(self) -> bytes:
        """Sorted-key compact ASCII JSON: the bytes the wallet signs (after the domain)."""
        body = {
            "action": self.action,
            "audience": self.audience,
            "expires_at": self.expires_at,
            "issued_at": self.issued_at,
            "issuer": self.issuer,
            "nonce": self.nonce,
            "role": self.role,
            "wallet": self.wallet,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")


def signing_bytes(challenge: Challenge) -> bytes:
    """Exactly what the wallet signs: domain separator + canonical challenge bytes."""
    return DOMAINS[challenge.action] + challenge.canonical()


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says."""

    wallet: str
    role: Role
    family_id: str  # the login session; revoking it revokes every token of the session
    issued_at: int
    expires_at: int
    token_id: str


# -- wire models of /api/v1/auth -----------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChallengeIn(_In):
    wallet: str = Field(max_length=64)
    action: Literal["login", "register"] = "login"
    role: Literal["renter", "provider"] | None = None


class ChallengeOut(BaseModel):
    nonce: str
    expires_at: int
    message: str = Field(description="canonical challenge JSON; sign domain + these bytes")
    domain: str = Field(description="domain separator prefix, ending in NUL")
    signing_bytes_hex: str = Field(description="exactly the bytes to sign: domain + message")


class SignedIn(_In):
    wallet: str = Field(max_length=64)
    nonce: str = Field(max_length=64)
    signature: str = Field(max_length=128, description="base58 Ed25519 signature")


class RefreshIn(_In):
    refresh_token: str = Field(max_length=256)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_at: int
    refresh_token: str
    refresh_expires_at: int
    role: str
    wallet: str


class RegisterOut(BaseModel):
    wallet: str
    role: str


class MeOut(BaseModel):
    wallet: str
    role: str
    expires_at: int
