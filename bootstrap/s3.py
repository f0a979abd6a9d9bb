"""S3-compatible blob backend over plain httpx, with AWS Signature Version 4 written here.

Objects live at ``{endpoint}/{bucket}/{prefix}{cid}`` (path-style addressing, which MinIO,
Ceph RGW and AWS all accept). Uploads are sent from the verified staged file with
``x-amz-content-sha256`` = the blob's SHA-256, which is the cid's hex: the payload is signed
without a second pass over the file, and the endpoint itself re-checks the bytes. Downloads
stream the response body chunk by chunk. Every httpx error and every unexpected status
becomes ``S3Error`` (the secret key never appears in it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import quote

import anyio
import anyio.to_thread
import httpx

from dgpu.node.adapters.storage_names import validate_cid

from .config import S3Config
from .errors import NotFound, S3Error
from .storage import CHUNK_SIZE, Staged

__all__ = ["EMPTY_SHA256", "S3BlobStore", "sigv4_headers"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def sigv4_headers(
    method: str,
    url: httpx.URL,
    headers: Mapping[str, str],
    payload_sha256: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    amz_date: str,
    service: str = "s3",
) -> dict[str, str]:
    """The headers to add to sign a request (x-amz-date, x-amz-content-sha256, authorization).

    ``headers`` are the other headers to sign (``host`` is taken from ``url`` if absent).
    ``amz_date`` is ``YYYYMMDDTHHMMSSZ`` (UTC).
    """
    all_headers = {k.lower(): " ".join(v.strip().split()) for k, v in headers.items()}
    all_headers.setdefault("host", url.netloc.decode("ascii"))
    all_headers["x-amz-date"] = amz_date
    all_headers["x-amz-content-sha256"] = payload_sha256
    signed = sorted(all_headers)
    canonical_headers = "".join(f"{name}:{all_headers[name]}\n" for name in signed)
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in sorted(url.params.multi_items())
    )
    canonical_request = "\n".join(
        [
            method.upper(),
            quote(url.path or "/", safe="/-_.~"),
            canonical_query,
            canonical_headers,
            ";".join(signed),
            payload_sha256,
        ]
    )
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_sha256,
        "authorization": (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={signature}"
        ),
    }


class S3BlobStore:
    """``BlobStore`` on an S3-compatible endpoint."""

    def __init__(
        self,
        config: S3Config,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        # Bounded connection pool and timeouts: a stuck endpoint cannot pile up sockets.
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )
        self._clock = clock

    def _url(self, cid: str) -> httpx.URL:
        validate_cid(cid)
        base = self.config.endpoint.rstrip("/")
        return httpx.URL(f"{base}/{self.config.bucket}/{self.config.prefix}{cid}")

    def _signed(self, method: str, url: httpx.URL, payload_sha256: str,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
        amz_date = dt.datetime.fromtimestamp(self._clock(), dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = dict(extra or {})
        headers.update(
            sigv4_headers(
                method, url, headers, payload_sha256,
                access_key=self.config.access_key_id,
                secret_key=self.config.secret_access_key.get_secret_value(),
                region=self.config.region,
                amz_date=amz_date,
            )
        )
        return headers

    @staticmethod
    def _fail(what: str, response: httpx.Response | None = None,
              exc: httpx.HTTPError | None = None) -> S3Error:
        if response is not None:
            return S3Error(f"S3 {what} answered HTTP {response.status_code}")
        return S3Error(f"S3 {what} failed: {type(exc).__name__}")

    async def put_staged(self, staged: Staged) -> None:
        url = self._url(staged.cid)
        headers = self._signed(
            "PUT", url, staged.cid.removeprefix("sha256-"),
            {"content-length": str(staged.size), "content-type": "application/octet-stream"},
        )

        async def body() -> AsyncIterator[bytes]:
            f = await anyio.to_thread.run_sync(open, staged.path, "rb")
            try:
                while chunk := await anyio.to_thread.run_sync(f.read, CHUNK_SIZE):
                    yield chunk
            finally:
                f.close()

        try:
            response = await self._client.put(url, content=body(), headers=headers)
        except httpx.HTTPError as exc:
            raise self._fail("upload", exc=exc) from exc
        if response.status_code not in (200, 201, 204):
            raise self._fail("upload", response)
        await anyio.to_thread.run_sync(os.unlink, staged.path)

    async def size(self, cid: str) -> int | None:
        url = self._url(cid)
        try:
            response = await self._client.head(url, headers=self._signed("HEAD", url, EMPTY_SHA256))
        except httpx.HTTPError as exc:
            raise self._fail("head", exc=exc) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail("head", response)
        return int(response.headers.get("content-length", "0"))

    async def read(self, cid: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        url = self._url(cid)
        request = self._client.build_request("GET", url, headers=self._signed("GET", url, EMPTY_SHA256))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._fail("download", exc=exc) from exc
        try:
            if response.status_code == 404:
                raise NotFound("no such blob")
            if response.status_code != 200:
                raise self._fail("download", response)
            try:
                async for chunk in response.aiter_bytes(chunk_size):
                    yield chunk
            except httpx.HTTPError as exc:
                raise self._fail("download", exc=exc) from exc
        finally:
            await response.aclose()

    async def delete(self, cid: str) -> None:
        url = self._url(cid)
        try:
            response = await self._client.delete(
                url, headers=self._signed("DELETE", url, EMPTY_SHA256)
            )
        except httpx.HTTPError as exc:
            raise self._fail("delete", exc=exc) from exc
        if response.status_code not in (200, 204, 404):
            raise self._fail("delete", response)

    async def aclose(self) -> None:
        await self._client.aclose()
