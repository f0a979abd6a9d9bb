"""The blob shelf, the /dgpu/blob/1.0.0 exchange over in-memory streams, and result archives."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import trio
import trio.testing

from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.errors import StreamError
from dgpu.node.services.blobs import (
    BLOB_CHUNK_BYTES,
    BlobError,
    BlobNotFound,
    BlobShelf,
    BlobVerifyError,
    ShelfFullError,
    UnsafeArchiveError,
    pack_dir,
    receive_blob,
    safe_unpack,
    serve_blob,
)

ALICE = "A" * 44
BOB = "B" * 44


class MemRaw:
    """An in-memory byte stream with the read/write/close/reset surface of a libp2p stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.s = stream

    async def read(self, n: int | None = None) -> bytes:
        return await self.s.receive_some(n or 65536)

    async def write(self, data: bytes) -> None:
        await self.s.send_all(data)

    async def close(self) -> None:
        await self.s.aclose()

    async def reset(self) -> None:
        await self.s.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _cid(data: bytes) -> str:
    return "sha256-" + hashlib.sha256(data).hexdigest()


async def test_shelf_bounds_count_and_bytes_and_frees_expired(tmp_path: Path) -> None:
    clock = Clock()
    shelf = BlobShelf(tmp_path / "shelf", max_total_bytes=100, max_count=2, max_blob_bytes=80, clock=clock)
    a = await shelf.add_file(_file(tmp_path, "a", b"a" * 60), allowed=[ALICE], ttl_s=10)
    assert a.cid == _cid(b"a" * 60) and a.size == 60 and a.path.read_bytes() == b"a" * 60
    with pytest.raises(ShelfFullError):  # 60 + 50 > 100 bytes
        await shelf.add_file(_file(tmp_path, "b", b"b" * 50), allowed=[ALICE], ttl_s=10)
    with pytest.raises(BlobError):  # one blob over the per-blob limit
        await shelf.add_file(_file(tmp_path, "big", b"x" * 81), allowed=[ALICE], ttl_s=10)
    await shelf.add_file(_file(tmp_path, "c", b"c" * 10), allowed=[ALICE], ttl_s=10)
    with pytest.raises(ShelfFullError):  # count bound: 2
        await shelf.add_file(_file(tmp_path, "d", b"d"), allowed=[ALICE], ttl_s=10)
    # the same content again: one file, allow-lists merged, the later expiry wins
    again = await shelf.add_file(_file(tmp_path, "a2", b"a" * 60), allowed=[BOB], ttl_s=100)
    assert again is a and a.allowed == {ALICE, BOB} and len(shelf) == 2
    clock.now += 50  # "c" expired, "a" lives on
    assert shelf.get(_cid(b"c" * 10), ALICE) is None
    await shelf.add_file(_file(tmp_path, "d", b"d"), allowed=[ALICE], ttl_s=10)
    assert len(shelf) == 2 and shelf.total_bytes == 61
    clock.now += 100
    assert shelf.prune() == 2 and len(shelf) == 0 and not a.path.exists()


async def test_shelf_allow_list(tmp_path: Path) -> None:
    shelf = BlobShelf(tmp_path / "shelf", clock=Clock())
    entry = await shelf.add_file(_file(tmp_path, "a", b"secret"), allowed=[ALICE], ttl_s=10)
    assert shelf.get(entry.cid, ALICE) is entry
    assert shelf.get(entry.cid, BOB) is None
    assert shelf.get(entry.cid, None) is None
    with pytest.raises(BlobError):
        await shelf.add_file(_file(tmp_path, "b", b"x"), allowed=[], ttl_s=10)


async def _exchange(shelf: BlobShelf, wallet: str | None, cid: str, dest: Path, **kw: object) -> int:
    a, b = trio.testing.memory_stream_pair()
    server = FramedStream(MemRaw(a), max_frame_bytes=65536, read_timeout_s=5)
    client = FramedStream(MemRaw(b), max_frame_bytes=65536, read_timeout_s=5)
    out: list[int | BaseException] = []

    async def fetch() -> None:
        try:
            out.append(await receive_blob(client, cid, dest, **kw))  # type: ignore[arg-type]
        except BlobError as exc:  # re-raised outside the nursery, unwrapped
            out.append(exc)
        await client.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch)
        with contextlib.suppress(StreamError):  # the fetcher may hang up early
            await serve_blob(server, shelf, wallet)
        await server.close()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


async def test_fetch_streams_verifies_and_reports_progress(tmp_path: Path) -> None:
    shelf = BlobShelf(tmp_path / "shelf", clock=Clock())
    data = bytes(range(256)) * 1000  # 256 000 bytes: several data frames
    entry = await shelf.add_file(_file(tmp_path, "a", data), allowed=[ALICE], ttl_s=10)
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "out" / "a"
    size = await _exchange(shelf, ALICE, entry.cid, dest, expected_size=len(data),
                           progress=lambda done, total: seen.append((done, total)))
    assert size == len(data) and dest.read_bytes() == data
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
    assert len(seen) == 1 + -(-len(data) // BLOB_CHUNK_BYTES)
    assert [p.name for p in dest.parent.iterdir()] == ["a"]  # no temp file left


async def test_fetch_refuses_strangers_without_saying_why(tmp_path: Path) -> None:
    shelf = BlobShelf(tmp_path / "shelf", clock=Clock())
    entry = await shelf.add_file(_file(tmp_path, "a", b"secret"), allowed=[ALICE], ttl_s=10)
    for wallet, cid in ((BOB, entry.cid), (ALICE, _cid(b"other"))):
        with pytest.raises(BlobNotFound, match="not_found"):
            await _exchange(shelf, wallet, cid, tmp_path / "out" / "a")
    assert not (tmp_path / "out" / "a").exists()


async def test_tampered_blob_is_detected_and_deleted(tmp_path: Path) -> None:
    shelf = BlobShelf(tmp_path / "shelf", clock=Clock())
    entry = await shelf.add_file(_file(tmp_path, "a", b"good data"), allowed=[ALICE], ttl_s=10)
    entry.path.write_bytes(b"evil data")  # same size, other content
    dest = tmp_path / "out" / "a"
    with pytest.raises(BlobVerifyError, match="tampered"):
        await _exchange(shelf, ALICE, entry.cid, dest)
    assert list(dest.parent.iterdir()) == []


async def test_size_mismatches_are_refused(tmp_path: Path) -> None:
    shelf = BlobShelf(tmp_path / "shelf", clock=Clock())
    entry = await shelf.add_file(_file(tmp_path, "a", b"0123456789"), allowed=[ALICE], ttl_s=10)
    dest = tmp_path / "out" / "a"
    with pytest.raises(BlobVerifyError, match="expected 11"):
        await _exchange(shelf, ALICE, entry.cid, dest, expected_size=11)
    with pytest.raises(BlobVerifyError, match="limit"):
        await _exchange(shelf, ALICE, entry.cid, dest, max_bytes=9)
    entry.path.write_bytes(b"01234")  # shrank under the server: a short blob
    with pytest.raises(BlobVerifyError, match="ended after 5 of 10"):
        await _exchange(shelf, ALICE, entry.cid, dest)
    assert list(dest.parent.iterdir()) == []


async def test_a_server_sending_more_than_it_announced_is_refused(tmp_path: Path) -> None:
    a, b = trio.testing.memory_stream_pair()
    server = FramedStream(MemRaw(a), max_frame_bytes=65536, read_timeout_s=5)
    client = FramedStream(MemRaw(b), max_frame_bytes=65536, read_timeout_s=5)
    dest = tmp_path / "a"
    async with trio.open_nursery() as nursery:
        async def liar() -> None:
            await server.read_frame()
            await server.write_frame(json.dumps({"size": 4}).encode())
            await server.write_frame(b"123456")

        nursery.start_soon(liar)
        with pytest.raises(BlobVerifyError, match="more bytes"):
            await receive_blob(client, _cid(b"1234"), dest)
    assert os.listdir(tmp_path) == []


def test_pack_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "b.txt").write_text("bee")
    (src / "sub" / "a.bin").write_bytes(b"\0\1\2")
    (src / "link").symlink_to("/etc/passwd")  # links are not packed
    one, two = tmp_path / "one.tar", tmp_path / "two.tar"
    pack_dir(src, one)
    (src / "b.txt").touch()  # a new mtime changes nothing
    pack_dir(src, two)
    assert one.read_bytes() == two.read_bytes()
    out = tmp_path / "out"
    written = safe_unpack(one, out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == ["b.txt", "sub/a.bin"]
    assert (out / "b.txt").read_text() == "bee" and (out / "sub" / "a.bin").read_bytes() == b"\0\1\2"
    assert not (out / "link").exists()


def _tar(tmp: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    path = tmp / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(("name", "kind", "linkname"), [
    ("../escape.txt", tarfile.REGTYPE, ""),
    ("ok/../../escape.txt", tarfile.REGTYPE, ""),
    ("/tmp/escape.txt", tarfile.REGTYPE, ""),
    ("link", tarfile.SYMTYPE, "/etc"),
    ("inside", tarfile.SYMTYPE, "x"),
    ("hard", tarfile.LNKTYPE, "/etc/passwd"),
    ("fifo", tarfile.FIFOTYPE, ""),
])
def test_unpack_refuses_unsafe_entries_before_writing_anything(tmp_path: Path, name: str, kind: bytes,
                                                                linkname: str) -> None:
    data = b"x" if kind == tarfile.REGTYPE else None
    archive = _tar(tmp_path, (_info("first.txt"), b"first"), (_info(name, kind, linkname), data))
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError):
        safe_unpack(archive, out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_unpack_does_not_follow_a_link_already_in_the_folder(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    archive = _tar(tmp_path, (_info("sub/x.txt"), b"x"))
    with pytest.raises(UnsafeArchiveError):
        safe_unpack(archive, out)
    assert list(elsewhere.iterdir()) == []


def test_unpack_bounds_size_and_count(tmp_path: Path) -> None:
    archive = _tar(tmp_path, (_info("a"), b"a" * 100), (_info("b"), b"b" * 100))
    with pytest.raises(UnsafeArchiveError, match="bytes"):
        safe_unpack(archive, tmp_path / "o1", max_total_bytes=150)
    with pytest.raises(UnsafeArchiveError, match="entries"):
        safe_unpack(archive, tmp_path / "o2", max_members=1)
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UnsafeArchiveError):
        safe_unpack(tmp_path / "junk.tar", tmp_path / "o3")
