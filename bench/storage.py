"""Benchmark: pin one large blob through a real bootstrap server process; print JSON.

    .venv/bin/python bench/storage.py [--size-mib 256] [--chunk-kib 1024]

Starts ``python -m dgpu.bootstrap.http_main`` in a temporary folder, registers and logs in a
wallet, then streams a generated file (never held whole in memory on either side) with
``PUT /api/v1/blobs/{cid}`` and downloads it again. Reports throughput both ways and the
server's peak RSS above its RSS before the upload (sampled every 20 ms with psutil): it must
stay flat, independent of the size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import base58
import httpx
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MIB = 1024 * 1024


def _blocks(size: int, chunk: int, seed: bytes) -> Iterator[bytes]:
    """Deterministic pseudo-random content, generated chunk by chunk."""
    block = hashlib.sha256(seed).digest() * (chunk // 32)
    sent = 0
    counter = 0
    while sent < size:
        n = min(chunk, size - sent)
        # vary each chunk cheaply so the content is not one repeated block
        piece = counter.to_bytes(8, "big") + block[8:n]
        yield piece[:n]
        sent += n
        counter += 1


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def _login(client: httpx.Client, key: Ed25519PrivateKey) -> dict[str, str]:
    wallet = base58.b58encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    tokens: dict[str, str] = {}
    for action in ("register", "login"):
        body: dict[str, str] = {"wallet": wallet, "action": action}
        if action == "register":
            body["role"] = "renter"
        ch = client.post("/api/v1/auth/challenge", json=body).json()
        sig = base58.b58encode(key.sign(bytes.fromhex(ch["signing_bytes_hex"]))).decode()
        r = client.post(
            f"/api/v1/auth/{action}", json={"wallet": wallet, "nonce": ch["nonce"], "signature": sig}
        )
        r.raise_for_status()
        tokens = r.json()
    return {"authorization": f"Bearer {tokens['access_token']}"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    args = parser.parse_args()
    size = args.size_mib * MIB
    chunk = args.chunk_kib * 1024

    cid_hash = hashlib.sha256()
    for piece in _blocks(size, chunk, b"dgpu-bench"):
        cid_hash.update(piece)
    cid = "sha256-" + cid_hash.hexdigest()

    with tempfile.TemporaryDirectory(prefix="dgpu-bench-") as tmp:
        server = subprocess.Popen(
            [sys.executable, "-m", "dgpu.bootstrap.http_main", "--data-dir", tmp,
             "--quota-bytes", str(4 * size + MIB), "--max-upload-bytes", str(size + MIB)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            info = json.loads(server.stdout.readline())
            base = f"http://127.0.0.1:{info['port']}"
            with httpx.Client(base_url=base, timeout=600) as client:
                auth = _login(client, Ed25519PrivateKey.generate())
                rss_before = psutil.Process(server.pid).memory_info().rss
                sampler = RssSampler(server.pid)
                sampler.start()
                t0 = time.perf_counter()
                r = client.put(
                    f"/api/v1/blobs/{cid}",
                    content=_blocks(size, chunk, b"dgpu-bench"),
                    headers={**auth, "content-length": str(size)},
                )
                upload_s = time.perf_counter() - t0
                r.raise_for_status()
                peak_upload = sampler.stop()

                sampler = RssSampler(server.pid)
                sampler.start()
                down_hash = hashlib.sha256()
                t0 = time.perf_counter()
                with client.stream("GET", f"/api/v1/blobs/{cid}", headers=auth) as resp:
                    resp.raise_for_status()
                    for piece in resp.iter_raw(chunk):
                        down_hash.update(piece)
                download_s = time.perf_counter() - t0
                peak_download = sampler.stop()
            assert "sha256-" + down_hash.hexdigest() == cid, "download does not match"
            print(json.dumps({
                "size_bytes": size,
                "upload_s": round(upload_s, 3),
                "upload_mib_s": round(size / MIB / upload_s, 1),
                "download_s": round(download_s, 3),
                "download_mib_s": round(size / MIB / download_s, 1),
                "server_rss_before_mib": round(rss_before / MIB, 1),
                "server_peak_rss_delta_upload_mib": round((peak_upload - rss_before) / MIB, 1),
                "server_peak_rss_delta_download_mib": round((peak_download - rss_before) / MIB, 1),
                "cpu_count": os.cpu_count(),
            }))
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
