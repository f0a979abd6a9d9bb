"""Keeping and pushing a finished job's result: the upload link is optional on the wire, a failed push
is reported in the ResultRef and never loses the kept result."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from pydantic import ValidationError

from dgpu.node.services.blobs import BlobShelf
from dgpu.node.services.result_shelf import shelve_result
from dgpu.protocol.messages import ResultRef
from tests.protocol.conftest import make_request

RENTER = "R" * 44
LINK = "https://bootstrap.example/api/v1/push/results/r.tar?wallet=w&max=10&exp=9&sig=abc"


class Pusher:
    def __init__(self, why: str | None) -> None:
        self.why = why
        self.pushed: list[tuple[str, bytes, str]] = []

    async def push(self, url: str, path: Path, cid: str, size: int) -> str | None:
        data = await trio.Path(path).read_bytes()
        assert len(data) == size
        self.pushed.append((url, data, cid))
        return self.why


def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "summary.txt").write_text("done\n")
    return out


async def test_a_pushed_result_is_reported_and_kept(tmp_path: Path) -> None:
    shelf, pusher = BlobShelf(tmp_path / "shelf"), Pusher(None)
    ref = await shelve_result(shelf, pusher, "ab" * 8, outputs(tmp_path), renter=RENTER, upload=LINK)
    assert ref is not None and ref.pushed is True and ref.push_error is None
    [(url, data, cid)] = pusher.pushed
    assert url == LINK and cid == ref.cid and len(data) == ref.size
    assert shelf.get(ref.cid, RENTER) is not None


async def test_a_failed_push_is_reported_and_the_result_still_kept(tmp_path: Path) -> None:
    shelf = BlobShelf(tmp_path / "shelf")
    ref = await shelve_result(shelf, Pusher("https://bootstrap.example/api/v1/push/results/r.tar answered 403"),
                              "ab" * 8, outputs(tmp_path), renter=RENTER, upload=LINK)
    assert ref is not None and ref.pushed is False and ref.push_error is not None and "403" in ref.push_error
    assert shelf.get(ref.cid, RENTER) is not None
    wire = ref.model_dump(mode="json")
    assert ResultRef.model_validate(wire) == ref
    # a provider that cannot push says so
    other = await shelve_result(BlobShelf(tmp_path / "shelf2"), None, "ab" * 8, tmp_path / "outputs",
                                renter=RENTER, upload=LINK)
    assert other is not None and other.pushed is False and other.push_error == "this provider does not push results"


async def test_without_a_link_nothing_is_pushed_and_the_wire_is_unchanged(tmp_path: Path) -> None:
    pusher = Pusher(None)
    ref = await shelve_result(BlobShelf(tmp_path / "shelf"), pusher, "ab" * 8, outputs(tmp_path),
                              renter=RENTER, upload=None)
    assert ref is not None and ref.pushed is None and pusher.pushed == []
    assert set(ref.model_dump(mode="json")) == {"type", "job_id", "cid", "size"}


def test_the_upload_link_is_optional_and_bounded_on_the_request() -> None:
    assert "result_upload" not in make_request().model_dump(mode="json")
    assert make_request(result_upload=LINK).model_dump(mode="json")["result_upload"] == LINK
    for bad in ("ftp://x/y", "https://x/" + "a" * 2048, "https://x/ y"):
        with pytest.raises(ValidationError):
            make_request(result_upload=bad)
