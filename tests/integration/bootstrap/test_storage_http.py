"""Blob pinning and the bucket/key view against a real server: integrity, limits, links."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from dgpu.bootstrap.storage import cid_of

from .harness import Harness, bootstrap_server, error_code, new_user


def _staging_empty(h: Harness) -> bool:
    return not any((h.config.data_dir / "store" / "tmp").iterdir())


def _stored_files(h: Harness) -> list[Path]:
    return [p for p in (h.config.data_dir / "store" / "blobs").rglob("sha256-*")]


async def test_upload_download_pin_unpin_list(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        _, auth = await new_user(h.client)
        data = os.urandom(3 * 1024 * 1024 + 17)
        cid = cid_of(data)
        r = await h.client.put(f"/api/v1/blobs/{cid}", content=data, headers=auth)
        assert r.status_code == 201, r.text
        assert r.json() == {"cid": cid, "size": len(data)}
        # streamed download, in several chunks
        chunks = []
        async with h.client.stream("GET", f"/api/v1/blobs/{cid}", headers=auth) as resp:
            assert resp.status_code == 200
            assert int(resp.headers["content-length"]) == len(data)
            async for chunk in resp.aiter_raw():
                chunks.append(chunk)
        assert b"".join(chunks) == data
        assert len(chunks) > 1
        # POST computes the cid
        other = b"hello dgpu"
        r = await h.client.post("/api/v1/blobs", content=other, headers=auth)
        assert r.status_code == 201
        assert r.json()["cid"] == "sha256-" + hashlib.sha256(other).hexdigest()
        listed = (await h.client.get("/api/v1/pins", headers=auth)).json()
        assert {p["cid"] for p in listed["pins"]} == {cid, r.json()["cid"]}
        assert listed["usage_bytes"] == len(data) + len(other)
        # another wallet neither lists nor reads it, nor pins it by its cid alone: the refusal is
        # the one a cid nobody stored gets (no existence oracle)
        _, auth2 = await new_user(h.client)
        assert (await h.client.get("/api/v1/pins", headers=auth2)).json()["pins"] == []
        assert (await h.client.get(f"/api/v1/blobs/{cid}", headers=auth2)).status_code == 404
        stolen = await h.client.post(f"/api/v1/pins/{cid}", headers=auth2)
        unknown = await h.client.post(f"/api/v1/pins/{cid_of(b'never stored')}", headers=auth2)
        assert (stolen.status_code, stolen.json()) == (unknown.status_code, unknown.json())
        assert stolen.status_code == 404
        assert (await h.client.get(f"/api/v1/blobs/{cid}", headers=auth2)).status_code == 404
        # uploading the same bytes (proof of having them) shares the stored blob
        r = await h.client.put(f"/api/v1/blobs/{cid}", content=data, headers=auth2)
        assert r.status_code == 201
        served = await h.client.get(f"/api/v1/blobs/{cid}", headers=auth2)
        assert served.status_code == 200 and served.headers["x-content-type-options"] == "nosniff"
        assert (await h.client.post(f"/api/v1/pins/{cid}", headers=auth2)).status_code == 201
        # unpin by one wallet keeps the bytes for the other; the last unpin deletes them
        assert (await h.client.delete(f"/api/v1/pins/{cid}", headers=auth)).status_code == 204
        assert len(_stored_files(h)) == 2
        assert (await h.client.delete(f"/api/v1/pins/{cid}", headers=auth2)).status_code == 204
        assert len(_stored_files(h)) == 1
        r = await h.client.post(f"/api/v1/pins/{cid}", headers=auth2)
        assert r.status_code == 404
        assert error_code(r) == "not_found"
        metrics = (await h.client.get("/metrics")).text
        assert 'dgpu_storage_uploads_total{result="ok"} 3.0' in metrics  # auth2 uploaded data too
        samples = {
            s.name: s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
        }
        assert samples["dgpu_storage_upload_bytes_total"] == 2 * len(data) + len(other)


async def test_corrupted_upload_refused_nothing_kept(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        _, auth = await new_user(h.client)
        data = os.urandom(2 * 1024 * 1024)
        cid = cid_of(data)
        corrupted = bytearray(data)
        corrupted[1_000_000] ^= 0x01
        r = await h.client.put(f"/api/v1/blobs/{cid}", content=bytes(corrupted), headers=auth)
        assert r.status_code == 422
        assert error_code(r) == "hash_mismatch"
        assert _stored_files(h) == []
        assert _staging_empty(h)
        assert (await h.client.get("/api/v1/pins", headers=auth)).json()["pins"] == []
        r = await h.client.put("/api/v1/blobs/sha256-XYZ", content=data, headers=auth)
        assert r.status_code == 400
        assert error_code(r) == "bad_cid"
        r = await h.client.put(f"/api/v1/blobs/{cid}", content=data)
        assert r.status_code == 401


async def test_oversize_and_over_quota_refused(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path, max_upload_bytes=256 * 1024, quota_bytes=400 * 1024) as h:
        _, auth = await new_user(h.client)
        big = os.urandom(300 * 1024)
        r = await h.client.put(f"/api/v1/blobs/{cid_of(big)}", content=big, headers=auth)
        assert r.status_code == 413
        assert error_code(r) == "too_large"

        # without Content-Length (chunked): refused while streaming
        async def chunks() -> object:
            for i in range(0, len(big), 64 * 1024):
                yield big[i : i + 64 * 1024]

        r = await h.client.post("/api/v1/blobs", content=chunks(), headers=auth)
        assert r.status_code == 413
        assert error_code(r) == "too_large"
        assert _stored_files(h) == [] and _staging_empty(h)

        first = os.urandom(200 * 1024)
        r = await h.client.put(f"/api/v1/blobs/{cid_of(first)}", content=first, headers=auth)
        assert r.status_code == 201
        second = os.urandom(250 * 1024)  # under the size limit, but 450 KiB > 400 KiB quota
        r = await h.client.put(f"/api/v1/blobs/{cid_of(second)}", content=second, headers=auth)
        assert r.status_code == 413
        assert error_code(r) == "quota_exceeded"
        assert len(_stored_files(h)) == 1 and _staging_empty(h)
        # the same bytes again do not count twice
        r = await h.client.put(f"/api/v1/blobs/{cid_of(first)}", content=first, headers=auth)
        assert r.status_code == 201
        # quota is per wallet
        _, auth2 = await new_user(h.client)
        r = await h.client.put(f"/api/v1/blobs/{cid_of(second)}", content=second, headers=auth2)
        assert r.status_code == 201


async def test_concurrent_uploads_respect_quota_and_all_land(tmp_path: Path) -> None:
    size = 512 * 1024
    async with bootstrap_server(tmp_path, quota_bytes=6 * size) as h:
        _, auth = await new_user(h.client)
        blobs = [os.urandom(size) for _ in range(8)]
        results: list[int] = []

        async def put(data: bytes) -> None:
            r = await h.client.put(f"/api/v1/blobs/{cid_of(data)}", content=data, headers=auth)
            results.append(r.status_code)

        async with trio.open_nursery() as nursery:
            for data in blobs:
                nursery.start_soon(put, data)
        # the quota is checked atomically at commit: exactly 6 fit
        assert sorted(results) == [201] * 6 + [413] * 2
        listed = (await h.client.get("/api/v1/pins", headers=auth)).json()
        assert len(listed["pins"]) == 6
        assert listed["usage_bytes"] == 6 * size
        assert len(_stored_files(h)) == 6 and _staging_empty(h)
        for pin in listed["pins"]:
            r = await h.client.get(f"/api/v1/blobs/{pin['cid']}", headers=auth)
            assert cid_of(r.content) == pin["cid"]


async def test_concurrent_uploads_of_8_blobs(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        users = [await new_user(h.client) for _ in range(8)]
        blobs = [os.urandom(1024 * 1024 + i) for i in range(8)]
        same = os.urandom(100_000)  # and every wallet uploads the same bytes too

        async def put(auth: dict[str, str], data: bytes) -> None:
            r = await h.client.put(f"/api/v1/blobs/{cid_of(data)}", content=data, headers=auth)
            assert r.status_code == 201, r.text

        async with trio.open_nursery() as nursery:
            for (_, auth), data in zip(users, blobs, strict=True):
                nursery.start_soon(put, auth, data)
                nursery.start_soon(put, auth, same)
        assert len(_stored_files(h)) == 9
        for (_, auth), data in zip(users, blobs, strict=True):
            r = await h.client.get(f"/api/v1/blobs/{cid_of(data)}", headers=auth)
            assert r.content == data


async def test_signed_links_expiry_and_tampering(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        _, auth = await new_user(h.client)
        data = os.urandom(100_000)
        cid = cid_of(data)
        assert (await h.client.put(f"/api/v1/blobs/{cid}", content=data, headers=auth)).status_code == 201
        r = await h.client.post(f"/api/v1/blobs/{cid}/link", json={"ttl_s": 600}, headers=auth)
        assert r.status_code == 200
        url, expires = r.json()["url"], r.json()["expires_at"]
        async with httpx.AsyncClient(base_url=h.base_url) as anonymous:
            ok = await anonymous.get(url)
            assert ok.status_code == 200 and ok.content == data
            sig = url.split("sig=")[1]
            tampered_sig = url.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
            r = await anonymous.get(tampered_sig)
            assert r.status_code == 403 and error_code(r) == "link_invalid"
            extended = url.replace(f"expires={expires}", f"expires={expires + 10_000}")
            r = await anonymous.get(extended)
            assert r.status_code == 403 and error_code(r) == "link_invalid"
            other = cid_of(b"other")
            r = await anonymous.get(url.replace(cid, other))
            assert r.status_code == 403 and error_code(r) == "link_invalid"
            r = await anonymous.get(url.split("&sig=")[0])
            assert r.status_code == 403
            h.clock.advance(601)
            r = await anonymous.get(url)
            assert r.status_code == 403 and error_code(r) == "link_expired"
            assert sig not in r.text
        # links only for blobs the wallet holds, and bounded lifetimes
        _, auth2 = await new_user(h.client)
        r = await h.client.post(f"/api/v1/blobs/{cid}/link", json={"ttl_s": 60}, headers=auth2)
        assert r.status_code == 404
        r = await h.client.post(
            f"/api/v1/blobs/{cid}/link", json={"ttl_s": 10**9}, headers=auth
        )
        assert r.status_code == 400


async def test_bucket_key_view_and_path_traversal(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        _, auth = await new_user(h.client)
        r = await h.client.put("/api/v1/storage/models/llama/weights.bin", content=b"w1", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["cid"] == cid_of(b"w1")
        r = await h.client.get("/api/v1/storage/models/llama/weights.bin", headers=auth)
        assert r.status_code == 200 and r.content == b"w1"
        # overwrite releases the old bytes
        r = await h.client.put("/api/v1/storage/models/llama/weights.bin", content=b"w2", headers=auth)
        assert r.status_code == 200
        assert len(_stored_files(h)) == 1
        listing = (await h.client.get("/api/v1/storage/models?prefix=llama/", headers=auth)).json()
        assert [o["key"] for o in listing["objects"]] == ["llama/weights.bin"]
        # keys are per wallet
        _, auth2 = await new_user(h.client)
        r = await h.client.get("/api/v1/storage/models/llama/weights.bin", headers=auth2)
        assert r.status_code == 404
        bad_keys = [
            "a/%2e%2e/b",  # '..' segment
            "%2e%2e/%2e%2e/etc/passwd",
            "%2e%2e",
            "a/%2E/b",  # '.' segment
            "%2Fetc/passwd",  # absolute (decodes to a leading '/')
            "a/b%00c",  # NUL
            "a%5C..%5Cb",  # backslashes
            "a//b",  # empty segment
            "k" * 1025,  # over-long
        ]
        for key in bad_keys:
            r = await h.client.put(f"/api/v1/storage/models/{key}", content=b"x", headers=auth)
            assert r.status_code == 400, key
            assert error_code(r) == "bad_key", key
        r = await h.client.put("/api/v1/storage/..%2F..%2Fx/key", content=b"x", headers=auth)
        assert r.status_code in (400, 404)
        r = await h.client.put("/api/v1/storage/A_B/key", content=b"x", headers=auth)
        assert r.status_code == 400 and error_code(r) == "bad_bucket"
        assert len(_stored_files(h)) == 1
        r = await h.client.delete("/api/v1/storage/models/llama/weights.bin", headers=auth)
        assert r.status_code == 204
        assert _stored_files(h) == []
        r = await h.client.delete("/api/v1/storage/models/llama/weights.bin", headers=auth)
        assert r.status_code == 404


async def test_keys_are_nfc_and_invalid_utf8_and_look_alikes_are_refused(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        _, auth = await new_user(h.client)
        # two raw keys that a lossy decoding would make one key
        for raw in ("a%FF", "a%FE", "a%ED%A0%80"):
            r = await h.client.put(httpx.URL(f"{h.base_url}/api/v1/storage/models/{raw}"),
                                   content=b"x", headers=auth)
            assert r.status_code == 400 and error_code(r) == "bad_key", raw
        # look-alikes of '.' and '/': one dot leader, fullwidth full stop and solidus, division slash
        for key in ("\u2024\u2024/x", "a/\uff0e\uff0e/b", "a\uff0fb", "a\u2215b", "\u2025/x"):
            r = await h.client.put(f"/api/v1/storage/models/{key}", content=b"x", headers=auth)
            assert r.status_code == 400 and error_code(r) == "bad_key", key
        # NFD and NFC spellings are one object
        r = await h.client.put("/api/v1/storage/models/cafe\u0301", content=b"v1", headers=auth)
        assert r.status_code == 200
        r = await h.client.get("/api/v1/storage/models/caf\u00e9", headers=auth)
        assert r.status_code == 200 and r.content == b"v1"
