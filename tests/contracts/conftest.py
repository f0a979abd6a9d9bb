"""Shared helpers for the escrow-ledger tests: fixed keys, the vectors, a served dev ledger."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fastapi import FastAPI

from dgpu.contracts.devledger import DevLedger, DevLedgerConfig, DevLedgerEscrow, ledger_router
from dgpu.contracts.local_rpc import LocalRpc, LocalRpcInfo
from dgpu.node.adapters.http_server import serve_http
from dgpu.protocol.keys import SigningKey

from .local_rpc import build_or_skip

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "escrow.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
SCENARIOS: list[dict[str, Any]] = VECTORS["scenarios"]

KEYS = {
    "renter": SigningKey(b"\x11" * 32),
    "provider": SigningKey(b"\x22" * 32),
    "stranger": SigningKey(b"\x33" * 32),
}


@dataclass
class Served:
    """A development ledger served over real HTTP on 127.0.0.1, and one client per key."""

    base_url: str
    ledger: DevLedger
    http: httpx.AsyncClient
    clients: dict[str, DevLedgerEscrow]


def ledger_config(tmp_path: Path, **over: Any) -> DevLedgerConfig:
    fields: dict[str, Any] = {"db_path": tmp_path / "ledger.sqlite3", "test_mode": True}
    fields.update(over)
    return DevLedgerConfig(**fields)


@asynccontextmanager
async def served_ledger(config: DevLedgerConfig) -> AsyncIterator[Served]:
    """Serve ``config``'s ledger with uvicorn (``serve_http``) until the block ends."""
    ledger = DevLedger(config)
    app = FastAPI()
    app.include_router(ledger_router(config, ledger=ledger))
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, app, "127.0.0.1", 0)
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=10.0) as http:
                clients = {name: DevLedgerEscrow(base, key, client=http) for name, key in KEYS.items()}
                yield Served(base_url=base, ledger=ledger, http=http, clients=clients)
            nursery.cancel_scope.cancel()
    finally:
        ledger.close()


@pytest.fixture(scope="session")
def local_rpc_binary() -> Path:
    """The ``dgpu-local-rpc`` binary, built once per session (skips without cargo, outside CI)."""
    return build_or_skip()


@pytest.fixture
def local_rpc_endpoint(local_rpc_binary: Path, tmp_path: Path) -> Iterator[LocalRpcInfo]:
    """A fresh local development Solana endpoint (mint and Config created), stopped afterwards."""
    with LocalRpc(local_rpc_binary, tmp_path / "solana") as info:
        yield info
