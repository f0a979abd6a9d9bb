"""Signed, expiring upload links for one object of one wallet's bucket.

A renter asks its bootstrap node (with its bearer token) for a link; it hands the link to a
provider, who PUTs the job's result to it without any token of the renter's. The link is the path
``/api/v1/push/{bucket}/{key}`` with the query ``wallet``, ``max`` (bytes), ``exp`` (epoch
seconds) and ``sig``: an HMAC-SHA256, under a secret only the bootstrap node has, over all of
them. The PUT must declare the body's cid (``x-dgpu-cid``); the bytes are checked against it and
against ``max`` while they stream, and the wallet's quota applies as for its own uploads.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from .errors import Forbidden, PayloadTooLarge

__all__ = ["MAX_LINK_TTL_S", "PUSH_PREFIX", "UploadGrant", "UploadLinkSigner"]

#: the path prefix of upload links (streamed: exempt from the JSON body limit)
PUSH_PREFIX = "/api/v1/push/"
#: a link lives at most a week: a long job's result, pushed when it ends
MAX_LINK_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class UploadGrant:
    """What a link allows: one key of one wallet's bucket, up to ``max_bytes``, until ``expires_at``."""

    wallet: str
    bucket: str
    key: str
    max_bytes: int
    expires_at: int

    def path_and_query(self, signature: str) -> str:
        query = urlencode({"wallet": self.wallet, "max": self.max_bytes, "exp": self.expires_at,
                           "sig": signature})
        return f"{PUSH_PREFIX}{quote(self.bucket, safe='')}/{quote(self.key, safe='/')}?{query}"


class UploadLinkSigner:
    """HMAC-SHA256 over every field of an ``UploadGrant`` (a domain apart from download links)."""

    _DOMAIN = b"dgpu/1/upload-link\0"

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("link secret must be at least 32 bytes")
        self._secret = secret

    def sign(self, grant: UploadGrant) -> str:
        fields = (grant.wallet, grant.bucket, grant.key, str(grant.max_bytes), str(grant.expires_at))
        msg = self._DOMAIN + b"\0".join(f.encode("utf-8") for f in fields)
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def check(self, grant: UploadGrant, signature: str, now: float, declared_size: int | None) -> None:
        """Forbidden unless the signature matches and the link has not expired; PayloadTooLarge
        when the declared size is over the link's."""
        if not hmac.compare_digest(self.sign(grant), signature):
            raise Forbidden("invalid upload link", code="link_invalid")
        if now >= grant.expires_at:
            raise Forbidden("upload link expired", code="link_expired")
        if declared_size is not None and declared_size > grant.max_bytes:
            raise PayloadTooLarge(f"this link takes at most {grant.max_bytes} bytes")
