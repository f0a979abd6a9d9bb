"""``/dgpu/blob/1.0.0``: content-addressed file transfer between peers.

A node keeps the files it offers on a bounded local :class:`BlobShelf` (one file per content id
``sha256-<hex>`` under the node's data dir). Each blob has an allow-list of wallets and an
expiry: a peer gets a blob only when the wallet its libp2p peer id carries is on that blob's
list (the renter's inputs: the chosen provider; a job's result: the renter).

Wire (one stream per blob): the fetcher sends one JSON frame ``{"cid": ...}``; the server
answers one JSON frame, ``{"size": N}`` or ``{"error": "not_found"}`` (the same answer for an
unknown, expired or not-allowed cid, so a stranger learns nothing), then for a size the raw
bytes in frames of at most :data:`BLOB_CHUNK_BYTES`, then closes. The fetcher streams into a
temp file next to the destination, checks the size and the sha256 as it goes, and renames
atomically; a mismatch deletes the temp file and raises :class:`BlobVerifyError`.

Results travel as one tar (:func:`pack_dir`: deterministic order, no owners or times) and are
unpacked with :func:`safe_unpack`, which refuses absolute paths, ``..``, links and special files
and bounds the member count and total size before writing anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

import trio

from dgpu.node.errors import NodeError, ReadTimeoutError, StreamError
from dgpu.node.ports.network import FramedStream, Network
from dgpu.protocol.ids import BLOB_PROTOCOL, MAX_FRAME_BYTES
from dgpu.protocol.peers import wallet_of_peer

__all__ = [
    "BLOB_CHUNK_BYTES",
    "DEFAULT_MAX_BLOB_BYTES",
    "BlobEntry",
    "BlobError",
    "BlobNotFound",
    "BlobServer",
    "BlobShelf",
    "BlobVerifyError",
    "Progress",
    "ShelfFullError",
    "UnsafeArchiveError",
    "cid_of_file",
    "fetch_blob",
    "pack_dir",
    "receive_blob",
    "safe_unpack",
    "serve_blob",
]

log = logging.getLogger(__name__)

#: data frames stay under MAX_FRAME_BYTES (64 KiB) with room for the length prefix
BLOB_CHUNK_BYTES: Final = 60 * 1024
#: one blob at most (an input file, a packed result); configurable per shelf / per fetch
DEFAULT_MAX_BLOB_BYTES: Final = 1024**3
#: the request and the header are tiny JSON objects
CONTROL_FRAME_BYTES: Final = 1024
#: the request must come quickly after the stream opens; a data frame must not stall longer
REQUEST_TIMEOUT_S: Final = 10.0
DATA_TIMEOUT_S: Final = 30.0
#: the longest a blob stream may live (1 GiB at ~300 KiB/s); bounds a slow reader's hold
BLOB_HANDLER_TIMEOUT_S: Final = 3600.0
#: an allow-list names the peers a blob is for: one or two wallets in practice
MAX_ALLOWED_WALLETS: Final = 16

_CID = re.compile(r"^sha256-[0-9a-f]{64}$")
_HASH_READ = 1024 * 1024

Progress = Callable[[int, int], None]


class BlobError(NodeError):
    """A blob could not be stored, served or fetched."""


class BlobNotFound(BlobError):
    """The peer does not have the blob, or will not give it to us."""


class BlobVerifyError(BlobError):
    """The bytes received do not match the content id or the announced size."""


class ShelfFullError(BlobError):
    """The shelf's byte or count bound is reached (after dropping expired blobs)."""


class UnsafeArchiveError(BlobError):
    """A result archive holds an entry that could write outside its folder, or is too big."""


def is_cid(text: str) -> bool:
    return bool(_CID.match(text))


def cid_of_file(path: Path, max_bytes: int | None = None) -> tuple[str, int]:
    """(content id, size) of a file; blocking, run it in a thread for big files."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_READ):
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise BlobError(f"{path.name} is larger than the {max_bytes}-byte blob limit")
            h.update(chunk)
    return "sha256-" + h.hexdigest(), size


@dataclass
class BlobEntry:
    cid: str
    size: int
    path: Path
    allowed: frozenset[str]
    expires_at: float


class BlobShelf:
    """Content-addressed files with allow-lists and expiries, bounded in bytes and count.

    The index lives in memory: a restarted node starts with an empty shelf (blobs are
    short-lived transfer copies, never the only copy of anything). Expired blobs are dropped
    whenever room is needed; live blobs are never evicted (a full shelf refuses instead).
    """

    def __init__(self, root: Path, *, max_total_bytes: int = 8 * 1024**3, max_count: int = 1024,
                 max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.max_total_bytes = max_total_bytes
        self.max_count = max_count
        self.max_blob_bytes = max_blob_bytes
        self.clock = clock
        self._entries: OrderedDict[str, BlobEntry] = OrderedDict()
        shutil.rmtree(root, ignore_errors=True)  # files without an index entry are orphans
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def prune(self) -> int:
        """Drop expired blobs; returns how many."""
        now = self.clock()
        dead = [cid for cid, e in self._entries.items() if e.expires_at <= now]
        for cid in dead:
            self.remove(cid)
        return len(dead)

    def remove(self, cid: str) -> None:
        entry = self._entries.pop(cid, None)
        if entry is not None:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()

    def temp_path(self) -> Path:
        """A fresh path on the shelf's file system (for a file that will be adopted)."""
        return self.root / f".tmp-{secrets.token_hex(8)}"

    async def add_file(self, source: Path, *, allowed: Iterable[str], ttl_s: float,
                       move: bool = False) -> BlobEntry:
        """Put ``source`` on the shelf (copied, or moved when ``move``); returns its entry.

        The same content added twice keeps one file; the allow-lists are merged and the later
        expiry wins."""
        wallets = frozenset(allowed)
        if not wallets or len(wallets) > MAX_ALLOWED_WALLETS:
            raise BlobError(f"a blob needs 1 to {MAX_ALLOWED_WALLETS} allowed wallets")
        cid, size = await trio.to_thread.run_sync(cid_of_file, source, self.max_blob_bytes)
        expires = self.clock() + ttl_s
        existing = self._entries.get(cid)
        if existing is not None and existing.path.is_file():
            existing.allowed = (existing.allowed | wallets)
            if len(existing.allowed) > MAX_ALLOWED_WALLETS:
                raise BlobError(f"blob {cid[:19]} is shared with too many wallets")
            existing.expires_at = max(existing.expires_at, expires)
            if move:
                await trio.Path(source).unlink(missing_ok=True)
            return existing
        self.prune()
        if len(self._entries) + 1 > self.max_count or self.total_bytes + size > self.max_total_bytes:
            if move:
                await trio.Path(source).unlink(missing_ok=True)
            raise ShelfFullError(f"the blob shelf is full ({len(self._entries)} blobs, "
                                 f"{self.total_bytes} bytes)")
        dest = self.root / cid

        def place() -> None:
            if move:
                os.replace(source, dest)
            else:
                tmp = self.temp_path()
                shutil.copyfile(source, tmp)
                os.replace(tmp, dest)
            dest.chmod(0o600)

        await trio.to_thread.run_sync(place)
        entry = BlobEntry(cid, size, dest, wallets, expires)
        self._entries[cid] = entry
        return entry

    def get(self, cid: str, wallet: str | None) -> BlobEntry | None:
        """The blob if ``wallet`` may have it now; None otherwise (unknown, expired, not allowed)."""
        entry = self._entries.get(cid)
        if entry is None or wallet is None or wallet not in entry.allowed:
            return None
        if entry.expires_at <= self.clock():
            self.remove(cid)
            return None
        return entry


# --- serving ---------------------------------------------------------------------------


async def serve_blob(fs: FramedStream, shelf: BlobShelf, wallet: str | None) -> None:
    """Answer one request on ``fs``. Raises StreamError when the stream breaks (caller logs)."""
    try:
        raw = await fs.read_frame(timeout_s=REQUEST_TIMEOUT_S, max_bytes=CONTROL_FRAME_BYTES)
        request = json.loads(raw)
        cid = request["cid"] if isinstance(request, dict) else None
    except (ValueError, KeyError):
        await fs.write_frame(json.dumps({"error": "bad_request"}).encode())
        return
    entry = shelf.get(cid, wallet) if isinstance(cid, str) and is_cid(cid) else None
    if entry is None:
        await fs.write_frame(json.dumps({"error": "not_found"}).encode())
        return
    try:
        f = entry.path.open("rb")
    except OSError:
        await fs.write_frame(json.dumps({"error": "not_found"}).encode())
        return
    with f:
        await fs.write_frame(json.dumps({"size": entry.size}).encode())
        sent = 0
        while sent < entry.size:
            chunk = await trio.to_thread.run_sync(f.read, min(BLOB_CHUNK_BYTES, entry.size - sent))
            if not chunk:  # the file shrank under us: the fetcher sees a short blob and refuses it
                break
            await fs.write_frame(chunk)
            sent += len(chunk)


class BlobServer:
    """The ``/dgpu/blob/1.0.0`` handler over a shelf."""

    def __init__(self, shelf: BlobShelf) -> None:
        self.shelf = shelf
        self.served = 0

    async def handle(self, fs: FramedStream) -> None:
        wallet = wallet_of_peer(fs.remote_peer) if fs.remote_peer else None
        try:
            await serve_blob(fs, self.shelf, wallet)
            self.served += 1
        except StreamError as exc:
            log.info("blob stream from %s ended: %s", fs.remote_peer, exc)
        except OSError as exc:  # the shelf's disk; the fetcher sees a short blob
            log.warning("blob shelf read failed: %s", exc)


def register(node: Network, shelf: BlobShelf) -> BlobServer:
    server = BlobServer(shelf)
    node.set_handler(BLOB_PROTOCOL, server.handle, max_frame_bytes=MAX_FRAME_BYTES,
                     read_timeout_s=REQUEST_TIMEOUT_S, handler_timeout_s=BLOB_HANDLER_TIMEOUT_S)
    return server


# --- fetching --------------------------------------------------------------------------


async def receive_blob(fs: FramedStream, cid: str, dest: Path, *,
                       max_bytes: int = DEFAULT_MAX_BLOB_BYTES, expected_size: int | None = None,
                       progress: Progress | None = None,
                       read_timeout_s: float = DATA_TIMEOUT_S) -> int:
    """Ask for ``cid`` on ``fs`` and write it to ``dest`` (atomically, verified); returns its size."""
    if not is_cid(cid):
        raise BlobError(f"not a content id: {cid[:80]!r}")
    await fs.write_frame(json.dumps({"cid": cid}).encode())
    try:
        header = json.loads(await fs.read_frame(timeout_s=read_timeout_s,
                                                max_bytes=CONTROL_FRAME_BYTES))
    except ValueError as exc:
        raise BlobError("the peer sent a malformed blob header") from exc
    if not isinstance(header, dict):
        raise BlobError("the peer sent a malformed blob header")
    if "error" in header:
        raise BlobNotFound(f"the peer did not give {cid[:19]}…: {str(header['error'])[:40]}")
    size = header.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BlobError("the peer sent a malformed blob header")
    if size > max_bytes:
        raise BlobVerifyError(f"blob {cid[:19]}… is {size} bytes, over the {max_bytes}-byte limit")
    if expected_size is not None and size != expected_size:
        raise BlobVerifyError(f"blob {cid[:19]}… announced {size} bytes, expected {expected_size}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.part-{secrets.token_hex(6)}"
    h = hashlib.sha256()
    got = 0
    ok = False
    try:
        with tmp.open("xb") as out:
            if progress is not None:
                progress(0, size)
            while got < size:
                chunk = await fs.read_frame(timeout_s=read_timeout_s,
                                            max_bytes=BLOB_CHUNK_BYTES)
                if not chunk or got + len(chunk) > size:
                    raise BlobVerifyError(f"blob {cid[:19]}…: more bytes than the {size} announced")
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                if progress is not None:
                    progress(got, size)
        if "sha256-" + h.hexdigest() != cid:
            raise BlobVerifyError(f"blob {cid[:19]}…: content does not match its id (tampered)")
        os.replace(tmp, dest)
        ok = True
    except ReadTimeoutError as exc:
        raise BlobError(f"blob {cid[:19]}… stalled after {got} of {size} bytes") from exc
    except StreamError as exc:
        raise BlobVerifyError(f"blob {cid[:19]}… ended after {got} of {size} bytes") from exc
    finally:
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return size


async def fetch_blob(node: Network, peer: str, cid: str, dest: Path, *,
                     max_bytes: int = DEFAULT_MAX_BLOB_BYTES, expected_size: int | None = None,
                     progress: Progress | None = None) -> int:
    """Fetch ``cid`` from ``peer`` into ``dest``; raises BlobError or NetworkError."""
    fs = await node.open_stream(peer, BLOB_PROTOCOL, max_frame_bytes=MAX_FRAME_BYTES,
                                read_timeout_s=DATA_TIMEOUT_S)
    try:
        return await receive_blob(fs, cid, dest, max_bytes=max_bytes, expected_size=expected_size,
                                  progress=progress)
    except StreamError as exc:  # the request could not be written
        raise BlobError(f"blob {cid[:19]}…: {exc}") from exc
    finally:
        await fs.close()


# --- result archives -------------------------------------------------------------------

#: a result archive's member count (each member costs a header and a file on the renter)
MAX_ARCHIVE_MEMBERS: Final = 100_000


def pack_dir(src: Path, dest: Path) -> int:
    """Tar the regular files and folders under ``src`` into ``dest``; returns dest's size.

    Deterministic: sorted order, no times, owners or links, modes 0644/0755, so the same
    folder always gives the same content id. Blocking (run it in a thread)."""

    def norm(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        executable = info.isdir() or bool(info.mode & 0o100)
        info.mode = 0o755 if executable else 0o644
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        if src.is_dir():
            for root, dirs, files in os.walk(src, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not (Path(root) / d).is_symlink())
                rel_root = Path(root).relative_to(src)
                for d in dirs:
                    tar.addfile(norm(tar.gettarinfo(Path(root) / d, str(rel_root / d))))
                for name in sorted(files):
                    path = Path(root) / name
                    if path.is_symlink() or not path.is_file():
                        continue
                    info = norm(tar.gettarinfo(path, str(rel_root / name)))
                    with path.open("rb") as f:
                        tar.addfile(info, f)
    return dest.stat().st_size


def _check_member(member: tarfile.TarInfo) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in name.parts:
        raise UnsafeArchiveError(f"archive entry {member.name[:80]!r} leaves the folder")
    if "\0" in member.name or not name.parts or name.parts == (".",):
        raise UnsafeArchiveError(f"archive entry {member.name[:80]!r} has no usable name")
    if not (member.isreg() or member.isdir()):
        raise UnsafeArchiveError(f"archive entry {member.name[:80]!r} is a link or special file")
    return name


def safe_unpack(archive: Path, dest_dir: Path, *, max_total_bytes: int = DEFAULT_MAX_BLOB_BYTES,
                max_members: int = MAX_ARCHIVE_MEMBERS) -> list[Path]:
    """Unpack a result tar into ``dest_dir``; returns the files written. Blocking.

    Every entry is checked before anything is written: only regular files and folders, no
    absolute paths, no ``..``, total size and member count bounded. Writes never follow a
    link that is already in ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = dest_dir.resolve()
    written: list[Path] = []
    try:
        with tarfile.open(archive, "r:") as tar:
            members: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
            total = 0
            for member in tar:
                if len(members) >= max_members:
                    raise UnsafeArchiveError(f"archive has more than {max_members} entries")
                name = _check_member(member)
                total += member.size if member.isreg() else 0
                if total > max_total_bytes:
                    raise UnsafeArchiveError(f"archive unpacks to more than {max_total_bytes} bytes")
                members.append((member, name))
            for member, name in members:
                target = root.joinpath(*name.parts)
                if not target.parent.resolve().is_relative_to(root) or target.is_symlink():
                    raise UnsafeArchiveError(f"archive entry {member.name[:80]!r} leaves the folder")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.parent.resolve().is_relative_to(root):
                    raise UnsafeArchiveError(f"archive entry {member.name[:80]!r} leaves the folder")
                source = tar.extractfile(member)
                if source is None:
                    raise UnsafeArchiveError(f"archive entry {member.name[:80]!r} is unreadable")
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
                written.append(target)
    except tarfile.TarError as exc:
        raise UnsafeArchiveError(f"not a valid result archive: {exc}") from exc
    return written
