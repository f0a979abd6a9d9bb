"""Builders shared by the pure protocol tests: fixed keys, times and messages."""

from __future__ import annotations

from typing import Any

import pytest

from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import EscrowRef, GpuSpec, JobRequest, Offer, Quote

NOW = 1_700_000_000
RENTER = SigningKey(bytes([1]) * 32)
PROVIDER = SigningKey(bytes([2]) * 32)
MALLORY = SigningKey(bytes([3]) * 32)
MINT = SigningKey(bytes([4]) * 32).public_key.wallet


def make_offer(**over: Any) -> Offer:
    fields: dict[str, Any] = dict(
        provider=PROVIDER.public_key.wallet, gpus=(GpuSpec(model="RTX 4090", vram_mib=24564),),
        price_per_minute=23_834, mint=MINT, ledger="dev", seq=1, issued_at=NOW, expires_at=NOW + 600,
    )
    fields.update(over)
    return Offer(**fields)


def make_request(**over: Any) -> JobRequest:
    fields: dict[str, Any] = dict(
        request_id="ab" * 8, renter=RENTER.public_key.wallet, provider=PROVIDER.public_key.wallet,
        offer_seq=1, gpu_model="RTX 4090", image="dgpu-test/busybox:1", command=("echo", "hi"),
        max_minutes=10, max_price_per_minute=30_000,
    )
    fields.update(over)
    return JobRequest(**fields)


def make_quote(request: JobRequest, **over: Any) -> Quote:
    fields: dict[str, Any] = dict(
        request_id=request.request_id, quote_id="cd" * 8, provider=request.provider,
        rate_per_minute=23_834, max_minutes=request.max_minutes, deposit=23_834 * request.max_minutes,
        fee_bps=500, mint=MINT, ledger="dev", start_deadline=NOW + 300, expires_at=NOW + 60,
    )
    fields.update(over)
    return Quote(**fields)


ESCROW = EscrowRef(ledger="dev", address="escrow-1", rental_id=7)


@pytest.fixture
def offer() -> Offer:
    return make_offer()
