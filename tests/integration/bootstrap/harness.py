"""A real bootstrap HTTP server (uvicorn under trio-asyncio) on 127.0.0.1, and wallet helpers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import base58
import httpx
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from dgpu.bootstrap.config import BootstrapHttpConfig, wallet_of
from dgpu.bootstrap.http_app import create_app
from dgpu.node.adapters.http_server import serve_http

START = 1_800_000_000.0


class FakeClock:
    """The app's clock, moved by the test (the server runs in the test's own process)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    client: httpx.AsyncClient
    clock: FakeClock
    admin: Ed25519PrivateKey
    config: BootstrapHttpConfig
    app: FastAPI
    base_url: str


@contextlib.asynccontextmanager
async def bootstrap_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[Harness]:
    clock = FakeClock()
    admin = Ed25519PrivateKey.generate()
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "bootstrap",
        "admin_wallets": frozenset({wallet_of(admin)}),
        # generous limits unless a test is about them
        "ip_burst": 100_000,
        "wallet_burst": 100_000,
    }
    settings.update(overrides)
    config = BootstrapHttpConfig(**settings)
    app = create_app(config, clock=clock)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_http, app, "127.0.0.1", 0, limits=config.connections))
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            yield Harness(client, clock, admin, config, app, base)
        nursery.cancel_scope.cancel()


def wallet(key: Ed25519PrivateKey) -> str:
    return wallet_of(key)


async def signed(
    client: httpx.AsyncClient, key: Ed25519PrivateKey, action: str, role: str | None = None
) -> dict[str, str]:
    """Ask a challenge and sign it; returns the body for /login or /register."""
    body: dict[str, Any] = {"wallet": wallet(key), "action": action}
    if role is not None:
        body["role"] = role
    r = await client.post("/api/v1/auth/challenge", json=body)
    assert r.status_code == 200, r.text
    ch = r.json()
    signature = key.sign(bytes.fromhex(ch["signing_bytes_hex"]))
    return {
        "wallet": wallet(key),
        "nonce": ch["nonce"],
        "signature": base58.b58encode(signature).decode(),
    }


async def register(client: httpx.AsyncClient, key: Ed25519PrivateKey, role: str) -> None:
    r = await client.post("/api/v1/auth/register", json=await signed(client, key, "register", role))
    assert r.status_code == 200, r.text


async def login(client: httpx.AsyncClient, key: Ed25519PrivateKey) -> dict[str, Any]:
    r = await client.post("/api/v1/auth/login", json=await signed(client, key, "login"))
    assert r.status_code == 200, r.text
    tokens: dict[str, Any] = r.json()
    return tokens


async def new_user(client: httpx.AsyncClient, role: str = "renter") -> tuple[Ed25519PrivateKey, dict[str, str]]:
    """A registered wallet and its Authorization header."""
    key = Ed25519PrivateKey.generate()
    await register(client, key, role)
    tokens = await login(client, key)
    return key, {"authorization": f"Bearer {tokens['access_token']}"}


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])
