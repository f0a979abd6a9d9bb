"""S3-compatible blob backend through botocore's S3 client (boto3), blocking calls in threads.

Objects live at ``{bucket}/{prefix}{cid}`` (path-style addressing, which MinIO, Ceph RGW and AWS
all accept). What botocore brings and operators expect: the standard credential chain when the
config names no keys (environment, shared config and credentials files, SSO, container and
instance metadata), SigV4 signing, retries with backoff (``standard`` mode) and multipart uploads
above ``multipart_threshold``.

Memory per transfer is bounded: a small upload streams from the verified staged file; a
multipart upload holds at most ``multipart_chunk_bytes × multipart_concurrency`` (S3 parts are at
least 5 MiB, so this cannot be today's 1 MiB); a download reads the body ``chunk_size`` bytes at
a time. Uploads carry ``ChecksumSHA256`` of the blob (the cid itself) on single-part puts, so the
endpoint re-checks the bytes. Blocking calls run in worker threads behind one limiter, as the
Docker SDK's do. Every botocore error and unexpected status becomes ``S3Error``; the secret key
never appears in it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread

from dgpu.node.adapters.storage_names import validate_cid

from .config import S3Config
from .errors import NotFound, S3Error
from .storage import CHUNK_SIZE, Staged

__all__ = ["S3BlobStore"]

#: concurrent blocking S3 calls per store (each holds a pooled connection and a thread)
_MAX_CALLS = 16


def _client(config: S3Config) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    keys: dict[str, str] = {}
    if config.access_key_id is not None and config.secret_access_key is not None:
        keys = {"aws_access_key_id": config.access_key_id,
                "aws_secret_access_key": config.secret_access_key.get_secret_value()}
    return session.client(
        "s3", endpoint_url=config.endpoint, region_name=config.region, **keys,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": config.max_attempts, "mode": "standard"},
            connect_timeout=10, read_timeout=60, max_pool_connections=_MAX_CALLS,
            # checksums only where the operation needs one: MinIO/Ceph releases reject the
            # CRC trailers newer botocore adds by default
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3BlobStore:
    """``BlobStore`` on an S3-compatible endpoint."""

    def __init__(self, config: S3Config, *, client: Any | None = None) -> None:
        self.config = config
        self._s3 = client if client is not None else _client(config)
        self._limiter = anyio.CapacityLimiter(_MAX_CALLS)

    def _key(self, cid: str) -> str:
        validate_cid(cid)
        return f"{self.config.prefix}{cid}"

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except ClientError as exc:
                if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
                    raise NotFound("no such blob") from None
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
                # from None: botocore's message may quote request details
                raise S3Error(f"S3 {what} answered HTTP {status} ({_code(exc) or 'error'})") from None
            except BotoCoreError as exc:
                raise S3Error(f"S3 {what} failed: {type(exc).__name__}") from None

        return await anyio.to_thread.run_sync(run, limiter=self._limiter)

    async def put_staged(self, staged: Staged) -> None:
        from boto3.s3.transfer import TransferConfig

        key = self._key(staged.cid)
        if staged.size < self.config.multipart_threshold:
            checksum = base64.b64encode(bytes.fromhex(staged.cid.removeprefix("sha256-"))).decode()

            def put() -> None:
                with open(staged.path, "rb") as body:
                    self._s3.put_object(Bucket=self.config.bucket, Key=key, Body=body,
                                        ContentLength=staged.size, ChecksumSHA256=checksum,
                                        ContentType="application/octet-stream")

            await self._call("upload", put)
        else:
            transfer = TransferConfig(
                multipart_threshold=self.config.multipart_threshold,
                multipart_chunksize=self.config.multipart_chunk_bytes,
                max_concurrency=self.config.multipart_concurrency,
                use_threads=self.config.multipart_concurrency > 1)
            await self._call("upload", self._s3.upload_file, str(staged.path), self.config.bucket, key,
                             ExtraArgs={"ContentType": "application/octet-stream"}, Config=transfer)
        await anyio.to_thread.run_sync(os.unlink, staged.path)

    async def size(self, cid: str) -> int | None:
        try:
            head = await self._call("head", self._s3.head_object, Bucket=self.config.bucket, Key=self._key(cid))
        except NotFound:
            return None
        return int(head["ContentLength"])

    async def read(self, cid: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        from botocore.exceptions import BotoCoreError

        got = await self._call("download", self._s3.get_object, Bucket=self.config.bucket, Key=self._key(cid))
        body = got["Body"]

        def next_chunk() -> bytes:
            try:
                return bytes(body.read(chunk_size))
            except (BotoCoreError, OSError) as exc:
                raise S3Error(f"S3 download failed: {type(exc).__name__}") from None

        try:
            while chunk := await anyio.to_thread.run_sync(next_chunk, limiter=self._limiter):
                yield chunk
        finally:
            body.close()

    async def delete(self, cid: str) -> None:
        try:
            await self._call("delete", self._s3.delete_object, Bucket=self.config.bucket, Key=self._key(cid))
        except NotFound:
            return

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._s3.close)
