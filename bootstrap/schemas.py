"""Request and response bodies of the bootstrap's storage and admin routes (auth's are in
``dgpu.protocol.auth``, shared with the node and the CLI)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dgpu.protocol.auth import TokenOut

from .auth import TokenPair

__all__ = [
    "BlobOut",
    "LinkIn",
    "LinkOut",
    "ObjectOut",
    "ObjectsOut",
    "PinOut",
    "PinsOut",
    "RevokeOut",
    "WalletRoleOut",
    "token_out",
]


def token_out(pair: TokenPair) -> TokenOut:
    return TokenOut(
        access_token=pair.access_token,
        expires_at=pair.access_expires_at,
        refresh_token=pair.refresh_token,
        refresh_expires_at=pair.refresh_expires_at,
        role=pair.role.value,
        wallet=pair.wallet,
    )


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BlobOut(BaseModel):
    cid: str
    size: int


class PinOut(BaseModel):
    cid: str
    size: int
    pinned_at: float


class PinsOut(BaseModel):
    pins: list[PinOut]
    usage_bytes: int
    quota_bytes: int


class LinkIn(_In):
    ttl_s: int = Field(default=3600, gt=0)


class LinkOut(BaseModel):
    url: str
    expires_at: int


class ObjectOut(BaseModel):
    bucket: str
    key: str
    cid: str
    size: int
    updated_at: float


class ObjectsOut(BaseModel):
    objects: list[ObjectOut]


class WalletRoleOut(BaseModel):
    wallet: str
    role: str


class RevokeOut(BaseModel):
    revoked_sessions: int
