"""The naming rules of dGPU storage (content ids, buckets, object keys).

The bootstrap node enforces them; the node's API checks them before it proxies a request, so a
bad name is refused locally with the same answer. Violations raise ``BadRequest``.
"""

from __future__ import annotations

import re

from .http_server import BadRequest

__all__ = ["MAX_KEY_BYTES", "validate_bucket", "validate_cid", "validate_key"]

MAX_KEY_BYTES = 1024  # as S3: longer object keys are refused
_CID_RE = re.compile(r"sha256-[0-9a-f]{64}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


def validate_cid(cid: str) -> str:
    if _CID_RE.fullmatch(cid) is None:
        raise BadRequest("cid must be 'sha256-' and 64 lowercase hex digits", code="bad_cid")
    return cid


def validate_bucket(bucket: str) -> str:
    if _BUCKET_RE.fullmatch(bucket) is None or ".." in bucket:
        raise BadRequest(
            "bucket must be 3-63 characters of a-z, 0-9, '.', '_', '-'", code="bad_bucket"
        )
    return bucket


def validate_key(key: str) -> str:
    """Refuse keys that could mean a path elsewhere: '..', '.', absolute, NUL, too long...

    Keys never become filesystem paths on the bootstrap node (they map to cids in SQLite); the
    rules keep them safe for any client that mirrors a bucket onto a disk.
    """
    if not key:
        raise BadRequest("key is empty", code="bad_key")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadRequest(f"key is longer than {MAX_KEY_BYTES} bytes", code="bad_key")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise BadRequest("key contains NUL or control characters", code="bad_key")
    if "\\" in key:
        raise BadRequest("key contains a backslash", code="bad_key")
    if key.startswith("/") or re.match(r"[A-Za-z]:", key):
        raise BadRequest("key must be relative", code="bad_key")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadRequest("key has an empty, '.' or '..' segment", code="bad_key")
    return key
