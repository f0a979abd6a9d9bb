"""The naming rules of dGPU storage (content ids, buckets, object keys).

The bootstrap node enforces them; the node's API checks them before it proxies a request, so a
bad name is refused locally with the same answer. Violations raise ``BadRequest``.
"""

from __future__ import annotations

import re
import unicodedata

from .http_server import BadRequest

__all__ = ["MAX_KEY_BYTES", "validate_bucket", "validate_cid", "validate_key"]

MAX_KEY_BYTES = 1024  # as S3: longer object keys are refused
_CID_RE = re.compile(r"sha256-[0-9a-f]{64}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
#: slashes and dots that NFKC does not fold to '/' or '.' but that read as them
_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u2571\u27cb\u3002\uff61\u0701\u0702\u2e31")
_REPLACEMENT = "\ufffd"  # what invalid UTF-8 in a URL decodes to


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


def _looks_like_dot_or_slash(ch: str) -> bool:
    return ch in _LOOKALIKES or (ch not in "./" and any(c in "./" for c in unicodedata.normalize("NFKC", ch)))


def validate_key(key: str) -> str:
    """The key in NFC; refuses keys that could mean a path elsewhere: '..', '.', absolute, NUL,
    too long, invalid UTF-8, look-alikes of '.' and '/'...

    Keys never become filesystem paths on the bootstrap node (they map to cids in SQLite); the
    rules keep them safe for any client that mirrors a bucket onto a disk. Callers use the
    returned key: two spellings of one NFC key are one object.
    """
    if not key:
        raise BadRequest("key is empty", code="bad_key")
    if _REPLACEMENT in key or any(0xD800 <= ord(ch) <= 0xDFFF for ch in key):
        # a lossy decoding would make two raw keys one: invalid UTF-8 is refused, not replaced
        raise BadRequest("key is not valid UTF-8", code="bad_key")
    key = unicodedata.normalize("NFC", key)
    if any(_looks_like_dot_or_slash(ch) for ch in key):
        raise BadRequest("key contains a look-alike of '.' or '/'", code="bad_key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
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
