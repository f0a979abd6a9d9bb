"""The S3 backend against moto's S3-compatible server (a separate process), when installed.

moto is not a dGPU dependency; the test is skipped where ``moto_server`` is not on PATH.
moto, in this default mode, does not verify SigV4 signatures: the signing itself is checked
against AWS's published example in ``tests/bootstrap/test_sigv4.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from dgpu.bootstrap.config import S3Config
from dgpu.bootstrap.s3 import EMPTY_SHA256, S3BlobStore, sigv4_headers
from dgpu.bootstrap.storage import cid_of

from .harness import bootstrap_server, new_user

pytestmark = pytest.mark.integration

MOTO = shutil.which("moto_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[str]:
    if MOTO is None:
        pytest.skip("moto_server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [MOTO, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _make_bucket(endpoint: str, bucket: str) -> None:
    url = httpx.URL(f"{endpoint}/{bucket}")
    amz = datetime.fromtimestamp(time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = sigv4_headers(
        "PUT", url, {}, EMPTY_SHA256, access_key="testing", secret_key="testing",
        region="us-east-1", amz_date=amz,
    )
    async with httpx.AsyncClient() as client:
        r = await client.put(url, headers=headers)
        assert r.status_code == 200, r.text


async def test_s3_backend_roundtrip_through_the_app(tmp_path: Path, moto: str) -> None:
    await _make_bucket(moto, "dgpu-blobs")
    s3 = S3Config(
        endpoint=moto, bucket="dgpu-blobs", access_key_id="testing",
        secret_access_key="testing",  # type: ignore[arg-type]
    )
    async with bootstrap_server(tmp_path, store="s3", s3=s3) as h:
        _, auth = await new_user(h.client)
        data = os.urandom(3 * 1024 * 1024 + 5)
        cid = cid_of(data)
        r = await h.client.put(f"/api/v1/blobs/{cid}", content=data, headers=auth)
        assert r.status_code == 201, r.text
        assert not any((h.config.data_dir / "store" / "tmp").iterdir())
        r = await h.client.get(f"/api/v1/blobs/{cid}", headers=auth)
        assert r.status_code == 200 and r.content == data
        # the object really is in the bucket
        store = S3BlobStore(s3)
        assert await store.size(cid) == len(data)
        assert (await h.client.delete(f"/api/v1/pins/{cid}", headers=auth)).status_code == 204
        assert await store.size(cid) is None
        await store.aclose()
