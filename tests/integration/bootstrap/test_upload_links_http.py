"""Upload links against a real server: a wallet signs one, anyone holding it stores one object in
that wallet's bucket (no token), once, bound to the key, size, expiry and declared cid; quota applies."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import trio

from dgpu.bootstrap.storage import cid_of
from dgpu.node.adapters.result_push import HttpResultPusher, redact

from .harness import Harness, bootstrap_server, error_code, new_user


async def test_push_through_a_link_then_read_back(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path, quota_bytes=5000) as h:
        _, auth = await new_user(h.client)
        r = await h.client.post("/api/v1/storage-links/results/job1/result.tar",
                                json={"max_bytes": 4000, "ttl_s": 600}, headers=auth)
        assert r.status_code == 200, r.text
        link = r.json()
        assert link["max_bytes"] == 4000 and "sig=" in link["path"]
        data = b"x" * 3000
        cid = cid_of(data)
        # no token on the PUT: the link is the authority
        wrong = await h.client.put(link["path"], content=b"y" * 3000, headers={"x-dgpu-cid": cid})
        assert (wrong.status_code, error_code(wrong)) == (422, "hash_mismatch")
        assert (await h.client.put(link["path"], content=data)).status_code == 400  # no cid declared
        ok = await h.client.put(link["path"], content=data, headers={"x-dgpu-cid": cid})
        assert ok.status_code == 200, ok.text
        assert ok.json()["cid"] == cid
        # one object per link: the failed tries above did not use it up, the stored one did
        again = await h.client.put(link["path"], content=b"w" * 10, headers={"x-dgpu-cid": cid_of(b"w" * 10)})
        assert (again.status_code, error_code(again)) == (403, "link_used")
        same = await h.client.put(link["path"], content=data, headers={"x-dgpu-cid": cid})  # a lost answer's retry
        assert same.status_code == 200 and same.json()["cid"] == cid
        got = await h.client.get("/api/v1/storage/results/job1/result.tar", headers=auth)
        assert got.status_code == 200 and got.content == data

        # the signature binds the key and the size: another key or a bigger max is refused
        url = urlsplit(link["path"])
        other_key = url.path.replace("result.tar", "other.tar") + "?" + url.query
        r = await h.client.put(other_key, content=data, headers={"x-dgpu-cid": cid})
        assert (r.status_code, error_code(r)) == (403, "link_invalid")
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        bigger = url.path + "?" + urlencode({**q, "max": "100000"})
        r = await h.client.put(bigger, content=data, headers={"x-dgpu-cid": cid})
        assert (r.status_code, error_code(r)) == (403, "link_invalid")
        # over the link's size: refused while streaming, nothing kept
        big = b"z" * 4001
        r = await h.client.put(link["path"], content=big, headers={"x-dgpu-cid": cid_of(big)})
        assert (r.status_code, error_code(r)) == (413, "too_large")
        assert (await h.client.get("/api/v1/storage/results", headers=auth)).json()["objects"][0]["size"] == 3000
        # the wallet's quota applies (3000 stored, 5000 allowed)
        r2 = await h.client.post("/api/v1/storage-links/results/job2/result.tar",
                                 json={"max_bytes": 4000}, headers=auth)
        more = b"q" * 3500
        r = await h.client.put(r2.json()["path"], content=more, headers={"x-dgpu-cid": cid_of(more)})
        assert (r.status_code, error_code(r)) == (413, "quota_exceeded")
        # expired
        h.clock.advance(601)
        r = await h.client.put(link["path"], content=data, headers={"x-dgpu-cid": cid})
        assert (r.status_code, error_code(r)) == (403, "link_expired")
        # signing needs the wallet's token
        r = await h.client.post("/api/v1/storage-links/results/k", json={"max_bytes": 10})
        assert r.status_code == 401


async def _link(h: Harness, auth: dict[str, str], key: str, max_bytes: int, ttl_s: int = 600) -> str:
    r = await h.client.post(f"/api/v1/storage-links/results/{key}", json={"max_bytes": max_bytes, "ttl_s": ttl_s},
                            headers=auth)
    assert r.status_code == 200, r.text
    return h.base_url + r.json()["path"]


async def test_the_provider_side_pusher_lands_a_file_and_reports_refusals_without_the_signature(
        tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        _, auth = await new_user(h.client)
        data = b"result archive" * 1000
        archive = tmp_path / "result.tar"
        archive.write_bytes(data)
        pusher = HttpResultPusher(attempts=3, first_backoff_s=0.01)
        link = await _link(h, auth, "a.tar", 1 << 20)
        assert await pusher.push(link, archive, cid_of(data), len(data)) is None
        got = await h.client.get("/api/v1/storage/results/a.tar", headers=auth)
        assert got.content == data

        small = await _link(h, auth, "b.tar", 100)
        why = await pusher.push(small, archive, cid_of(data), len(data))
        assert why is not None and "413" in why
        h.clock.advance(601)
        why = await pusher.push(link, archive, cid_of(data), len(data))
        assert why is not None and "link_expired" in why
        signature = parse_qs(urlsplit(link).query)["sig"][0]
        assert signature not in why and "sig=" not in why
        assert (await h.client.get("/api/v1/storage/results/b.tar", headers=auth)).status_code == 404
        # over the pusher's own bound: not even tried
        assert "over" in (await HttpResultPusher(max_bytes=10).push(link, archive, cid_of(data), len(data)) or "")


async def test_an_unreachable_link_is_retried_then_reported(tmp_path: Path) -> None:
    with trio.socket.socket() as sock:  # a port nothing listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    archive = tmp_path / "r.tar"
    archive.write_bytes(b"x")
    link = f"http://127.0.0.1:{port}/api/v1/push/results/r.tar?wallet=w&max=10&exp=9&sig=deadbeef"
    why = await HttpResultPusher(attempts=2, first_backoff_s=0.01).push(link, archive, cid_of(b"x"), 1)
    assert why is not None and "ConnectError" in why and "deadbeef" not in why
    assert redact(link) == f"http://127.0.0.1:{port}/api/v1/push/results/r.tar"
