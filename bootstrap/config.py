"""Configuration of the bootstrap node's HTTP services, built once at startup.

``BootstrapHttpConfig`` is a frozen pydantic model: the CLI (``dgpu bootstrap``) parses flags or
a file into it, ``create_app`` reads it. The node's Ed25519 key (its libp2p identity and the key
that signs JWTs) is loaded from a Solana CLI keypair file (JSON array of 64 bytes: 32-byte seed
then 32-byte public key, mode 0600).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import base58
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from dgpu.node.adapters.http_server import ConnectionLimits

from .errors import ConfigError

__all__ = [
    "BootstrapHttpConfig",
    "S3Config",
    "load_or_create_node_key",
    "wallet_of",
]

_GIB = 1024**3


class S3Config(BaseModel):
    """An S3-compatible endpoint (AWS S3, MinIO, Ceph RGW...) used as the blob backend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str | None = None  # e.g. "http://127.0.0.1:9000"; None: AWS's own for the region
    region: str = "us-east-1"
    bucket: str
    # Both or neither: without them botocore's standard credential chain applies (environment,
    # shared credentials/config files, SSO, container and instance metadata).
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None  # SecretStr: never printed by repr() or in errors
    prefix: str = "blobs/"  # object key prefix; the object key is prefix + cid
    max_attempts: int = Field(default=5, ge=1, le=20)  # botocore "standard" retries, backoff
    # Blobs from this size go up in parts; memory per upload <= chunk x concurrency.
    multipart_threshold: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    multipart_chunk_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    multipart_concurrency: int = Field(default=2, ge=1, le=16)

    @model_validator(mode="after")
    def _keys_together(self) -> S3Config:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        return self


class BootstrapHttpConfig(BaseModel):
    """Settings of the auth + storage HTTP app. Durations are seconds, sizes bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path  # holds the SQLite database and the filesystem blob store
    key_path: Path | None = None  # Solana keypair file; default data_dir / "node-key.json"
    issuer: str = "dgpu-bootstrap"  # JWT "iss"
    audience: str = "dgpu"  # JWT "aud"; nodes accept only tokens for this audience
    access_ttl_s: int = Field(default=900, gt=0, le=86_400)
    refresh_ttl_s: int = Field(default=30 * 86_400, gt=0)
    challenge_ttl_s: int = Field(default=120, gt=0, le=3600)
    # Bounds the in-memory challenge table (one entry per outstanding login attempt).
    max_pending_challenges: int = Field(default=10_000, gt=0)
    admin_wallets: frozenset[str] = frozenset()
    # Token buckets: rate in tokens per second, burst = bucket capacity.
    ip_rate_per_s: float = Field(default=20.0, gt=0)
    ip_burst: int = Field(default=100, gt=0)
    wallet_rate_per_s: float = Field(default=5.0, gt=0)
    wallet_burst: int = Field(default=30, gt=0)
    # Bounds the rate limiter's memory: least recently seen keys are forgotten beyond this.
    rate_limit_max_keys: int = Field(default=100_000, gt=0)
    quota_bytes: int = Field(default=10 * _GIB, ge=0)  # per wallet, over its distinct cids
    max_upload_bytes: int = Field(default=2 * _GIB, gt=0)  # per upload
    max_link_ttl_s: int = Field(default=7 * 86_400, gt=0)
    store: Literal["fs", "s3"] = "fs"
    s3: S3Config | None = None
    # Slow and greedy clients: header/body read timeouts, minimum upload rate, connection bounds.
    connections: ConnectionLimits = ConnectionLimits()

    @field_validator("admin_wallets")
    @classmethod
    def _check_wallets(cls, value: frozenset[str]) -> frozenset[str]:
        for wallet in value:
            try:
                raw = base58.b58decode(wallet)
            except ValueError as exc:
                raise ValueError("admin wallet is not base58") from exc
            if len(raw) != 32:
                raise ValueError("admin wallet is not a 32-byte public key")
        return value

    @property
    def resolved_key_path(self) -> Path:
        return self.key_path if self.key_path is not None else self.data_dir / "node-key.json"


def wallet_of(key: Ed25519PrivateKey) -> str:
    """The base58 Solana address (= the Ed25519 public key) of ``key``."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base58.b58encode(raw).decode("ascii")


def load_or_create_node_key(path: Path) -> Ed25519PrivateKey:
    """The bootstrap node's key: the node keystore's file at ``path`` (Solana CLI layout, 0600),
    created on first use; passphrase-encrypted files read ``DGPU_KEY_PASSPHRASE``."""
    from dgpu.node.adapters.keystore import load_or_create
    from dgpu.node.errors import KeystoreError

    try:
        key = load_or_create(path, passphrase=os.environ.get("DGPU_KEY_PASSPHRASE"))
    except KeystoreError as exc:
        raise ConfigError(f"node key file {path}: {exc}") from None
    return Ed25519PrivateKey.from_private_bytes(key.seed)
    try:
        data = json.loads(path.read_text())
        raw = bytes(data)
    except (OSError, ValueError, TypeError):
        # from None: the parser's message could quote key bytes.
        raise ConfigError(f"node key file {path} is unreadable or not a JSON byte array") from None
    if len(raw) != 64:
        raise ConfigError(f"node key file {path} does not hold 64 bytes")
    key = Ed25519PrivateKey.from_private_bytes(raw[:32])
    if key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != raw[32:]:
        raise ConfigError(f"node key file {path}: public half does not match the secret")
    return key
