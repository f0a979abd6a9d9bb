"""Content-addressed blob storage: staging with hash verification, backends, links, key rules.

Theory of operation:
- A blob's id is ``sha256-<64 lowercase hex>`` of its bytes (its *cid*).
- An upload is always staged first in a temporary file in the store folder (``tmp/``): each
  chunk read from the request is hashed and written there, in a worker thread, never holding
  more than ``STAGE_BUFFER`` bytes in memory; at the end the file is fsynced and its hash
  compared with the claimed cid. A mismatch, an over-limit body or any error deletes the staged
  file: nothing is kept.
- A verified staged file is handed to a ``BlobStore`` backend, which makes it visible under its
  cid: the filesystem store renames it atomically into ``blobs/`` (same filesystem, then fsync of
  the directory); the S3 store uploads it (its SigV4 payload hash *is* the cid) and deletes it.
- Which wallets reference which cids lives in SQLite (``db.py``); the bytes are deleted when the
  last reference goes. ``KeyedLock`` serializes that check-and-delete with commits of the same
  cid, so a concurrent upload of the same bytes is never left pointing at a deleted file.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import anyio
import anyio.to_thread

from dgpu.node.adapters.storage_names import validate_cid

from .errors import Forbidden, NotFound, StoreError

__all__ = [
    "CHUNK_SIZE",
    "BlobStore",
    "FsBlobStore",
    "KeyedLock",
    "LinkSigner",
    "Spool",
    "Staging",
    "cid_of",
]

# Size of one read from disk when streaming a blob out (memory per download in flight).
CHUNK_SIZE = 1024 * 1024
# Bytes gathered from the request before one hash+write in a worker thread: bounds the memory
# per upload in flight while keeping thread hops rare (request chunks are often ~64 KiB).
STAGE_BUFFER = 1024 * 1024


def cid_of(data: bytes) -> str:
    return "sha256-" + hashlib.sha256(data).hexdigest()


class LinkSigner:
    """HMAC-SHA256 signed, expiring download links over (cid, expiry)."""

    _DOMAIN = b"dgpu/1/blob-link\0"

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("link secret must be at least 32 bytes")
        self._secret = secret

    def sign(self, cid: str, expires_at: int) -> str:
        msg = self._DOMAIN + cid.encode("ascii") + b"\0" + str(expires_at).encode("ascii")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def check(self, cid: str, expires_at: int, signature: str, now: float) -> None:
        """Forbidden unless the signature matches and the link has not expired."""
        if not hmac.compare_digest(self.sign(cid, expires_at), signature):
            raise Forbidden("invalid download link", code="link_invalid")
        if now >= expires_at:
            raise Forbidden("download link expired", code="link_expired")


class KeyedLock:
    """One anyio.Lock per key, alive only while held or awaited (bounded by requests in flight)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(frozen=True, slots=True)
class Staged:
    """A verified staged upload; the backend takes ownership of ``path``."""

    path: Path
    cid: str
    size: int


class Spool:
    """One upload being staged: buffered writes, hashed as they go. See ``Staging.spool``."""

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path = path
        self._f = f
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self.size = 0

    def _flush_sync(self, data: bytes) -> None:
        self._hash.update(data)
        self._f.write(data)

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        self.size += len(chunk)
        if len(self._buffer) >= STAGE_BUFFER:
            data, self._buffer = bytes(self._buffer), bytearray()
            await anyio.to_thread.run_sync(self._flush_sync, data)

    async def finish(self) -> Staged:
        data, self._buffer = bytes(self._buffer), bytearray()

        def last() -> None:
            self._flush_sync(data)
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

        await anyio.to_thread.run_sync(last)
        return Staged(self.path, "sha256-" + self._hash.hexdigest(), self.size)


class Staging:
    """Temporary files for uploads, in ``root`` (the same filesystem as the fs store)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Delete leftovers of a previous run (a crash mid-upload)."""
        for leftover in self.root.glob("upload-*"):
            leftover.unlink(missing_ok=True)

    @contextlib.asynccontextmanager
    async def spool(self) -> AsyncIterator[Spool]:
        """Yield a Spool; on exit its file is deleted unless a backend took it (moved it)."""
        path = self.root / f"upload-{secrets.token_hex(12)}"
        try:
            f = await anyio.to_thread.run_sync(open, path, "xb")
        except OSError as exc:
            raise StoreError(f"cannot stage an upload: {exc.strerror}") from exc
        spool = Spool(path, f)
        try:
            yield spool
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._discard, f, path)

    @staticmethod
    def _discard(f: IO[bytes], path: Path) -> None:
        f.close()
        path.unlink(missing_ok=True)


class BlobStore(Protocol):
    """Where committed blobs live. Staging is always local; see the module docstring."""

    async def put_staged(self, staged: Staged) -> None:
        """Make ``staged`` readable under its cid and take its file (moved or deleted)."""
        ...

    async def size(self, cid: str) -> int | None:
        """The stored size of ``cid``, or None if absent."""
        ...

    def read(self, cid: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Stream the blob; raises NotFound (before the first chunk) if it is absent."""
        ...

    async def delete(self, cid: str) -> None:
        """Delete the blob if present."""
        ...

    async def aclose(self) -> None: ...


class FsBlobStore:
    """Blobs as files ``root/blobs/<2 hex>/<cid>``, written by atomic rename (the default)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, cid: str) -> Path:
        validate_cid(cid)
        return self.root / cid[7:9] / cid

    async def put_staged(self, staged: Staged) -> None:
        final = self.path_of(staged.cid)

        def commit() -> None:
            final.parent.mkdir(exist_ok=True)
            os.replace(staged.path, final)  # atomic; same bytes if it already existed
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # make the rename durable
            finally:
                os.close(fd)

        try:
            await anyio.to_thread.run_sync(commit)
        except OSError as exc:
            raise StoreError(f"cannot commit a blob: {exc.strerror}") from exc

    async def size(self, cid: str) -> int | None:
        try:
            st = await anyio.to_thread.run_sync(os.stat, self.path_of(cid))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot stat a blob: {exc.strerror}") from exc
        return st.st_size

    async def read(self, cid: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        path = self.path_of(cid)
        try:
            f = await anyio.to_thread.run_sync(open, path, "rb")
        except FileNotFoundError:
            raise NotFound("no such blob") from None
        except OSError as exc:
            raise StoreError(f"cannot read a blob: {exc.strerror}") from exc
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(f.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            f.close()

    async def delete(self, cid: str) -> None:
        path = self.path_of(cid)
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def aclose(self) -> None:
        return None
