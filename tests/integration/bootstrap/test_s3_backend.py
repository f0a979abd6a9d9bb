"""The S3 backend (botocore) against moto's S3-compatible server, a separate process.

moto is a development dependency (``.[dev]``); the test is skipped only where ``moto_server`` is
not on PATH. Signing is botocore's own; moto checks the checksums and the multipart protocol.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from pydantic import SecretStr

from dgpu.bootstrap.config import S3Config
from dgpu.bootstrap.errors import S3Error
from dgpu.bootstrap.s3 import S3BlobStore
from dgpu.bootstrap.storage import Staged, cid_of

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
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)


def _config(endpoint: str, **extra: object) -> S3Config:
    return S3Config.model_validate({"endpoint": endpoint, "bucket": "dgpu-blobs", "access_key_id": "testing",
                                    "secret_access_key": SecretStr("testing"), **extra})


async def test_s3_backend_roundtrip_through_the_app(tmp_path: Path, moto: str) -> None:
    await _make_bucket(moto, "dgpu-blobs")
    s3 = _config(moto)
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


async def test_large_blobs_go_up_in_parts_and_stream_back(tmp_path: Path, moto: str) -> None:
    await _make_bucket(moto, "dgpu-blobs")
    five_mib = 5 * 1024 * 1024
    store = S3BlobStore(_config(moto, multipart_threshold=five_mib, multipart_chunk_bytes=five_mib))
    data = os.urandom(2 * five_mib + 123)
    cid = cid_of(data)
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    await store.put_staged(Staged(staged, cid, len(data)))
    assert not staged.exists()  # the store took ownership of the staged file
    head = boto3.client("s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing").head_object(Bucket="dgpu-blobs", Key=f"blobs/{cid}")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: three parts
    chunks = [chunk async for chunk in store.read(cid, chunk_size=1024 * 1024)]
    assert max(len(c) for c in chunks) <= 1024 * 1024
    assert b"".join(chunks) == data
    await store.aclose()


async def test_credentials_from_the_standard_chain_and_clear_errors(
        tmp_path: Path, moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await _make_bucket(moto, "dgpu-blobs")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = S3BlobStore(S3Config(endpoint=moto, bucket="dgpu-blobs"))  # no keys in the config
    data = b"from the environment's credentials"
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    await store.put_staged(Staged(staged, cid_of(data), len(data)))
    assert await store.size(cid_of(data)) == len(data)
    assert await store.size(cid_of(b"absent")) is None
    await store.aclose()
    # a bucket that does not exist: one clear error, no secret in it
    missing = S3BlobStore(_config(moto, bucket="no-such-bucket", max_attempts=1))
    staged.write_bytes(data)
    with pytest.raises(S3Error) as err:
        await missing.put_staged(Staged(staged, cid_of(data), len(data)))
    assert "HTTP 404" in str(err.value) and "testing" not in str(err.value)
    await missing.aclose()


def test_keys_come_in_pairs() -> None:
    with pytest.raises(ValueError, match="both"):
        S3Config(endpoint="http://127.0.0.1:1", bucket="b", access_key_id="only-the-id")
