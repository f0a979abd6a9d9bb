"""Shared helpers for the node's in-process tests."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from dgpu.node.adapters.p2p_framing import FramedStream
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


class _MemRaw:
    """An in-memory byte stream with the read/write/close/reset surface of a libp2p stream."""

    def __init__(self, stream: Any) -> None:
        self.s = stream

    async def read(self, n: int | None = None) -> bytes:
        return bytes(await self.s.receive_some(n or 65536))

    async def write(self, data: bytes) -> None:
        await self.s.send_all(data)

    async def close(self) -> None:
        await self.s.aclose()

    async def reset(self) -> None:
        await self.s.aclose()


@pytest.fixture
def framed_pair() -> Callable[..., tuple[FramedStream, FramedStream]]:
    """``framed_pair(remote_peer="")`` → (server end, client end) of an in-memory framed stream;
    the server end's ``remote_peer`` is what a libp2p host would report for the client."""

    def make(remote_peer: str = "") -> tuple[FramedStream, FramedStream]:
        a, b = trio.testing.memory_stream_pair()
        return (FramedStream(_MemRaw(a), remote_peer=remote_peer, max_frame_bytes=65536, read_timeout_s=5),
                FramedStream(_MemRaw(b), max_frame_bytes=65536, read_timeout_s=5))

    return make
