"""Shared helpers for the node's in-process tests."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, GpuSpec, Offer

MINT = SigningKey(b"\x07" * 32).public_key.wallet


def make_offer(key: SigningKey, *, seq: int = 1, now: int = 1_000, ttl: int = 300,
               price: int = 100, model: str = "RTX 4090", vram: int = 24_576, count: int = 1,
               region: str = "eu", simulated: bool = False,
               executors: tuple[Executor, ...] = (Executor.DOCKER,)) -> Offer:
    return Offer(
        provider=key.public_key.wallet,
        gpus=(GpuSpec(model=model, vram_mib=vram, count=count, simulated=simulated),),
        price_per_minute=price,
        mint=MINT,
        ledger="dev",
        region=region,
        executors=executors,
        seq=seq,
        issued_at=now,
        expires_at=now + ttl,
    )


@pytest.fixture
def offer_factory() -> Callable[..., Offer]:
    """``make_offer`` as a fixture (test modules here are not importable as a package)."""
    return make_offer


@pytest.fixture
def key() -> SigningKey:
    return SigningKey(secrets.token_bytes(32))
