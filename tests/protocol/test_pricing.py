"""The pricing engine against hand-computed numbers for the seed's rates."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dgpu.protocol.errors import PricingError
from dgpu.protocol.pricing import (
    DEFAULT_BASE_RATE,
    PriceInputs,
    demand_multiplier,
    estimate,
    fee_for,
    hourly_price,
    rate_per_minute,
    to_base_units,
)


@pytest.mark.parametrize(("model", "vram_mib", "watts", "hourly", "per_minute"), [
    # base + GiB x 0.02 + W x 0.001 ; per minute = ceil(hourly x 1e6 / 60)
    ("RTX 4090", 24 * 1024, 450, Decimal("1.43"), 23_834),    # 0.50 + 0.48 + 0.45; 1_430_000/60 = 23833.3
    ("RTX 4080", 16 * 1024, 320, Decimal("1.04"), 17_334),    # 0.40 + 0.32 + 0.32; 17333.3
    ("A100", 80 * 1024, 400, Decimal("4.00"), 66_667),         # 2.00 + 1.60 + 0.40; 66666.6
    ("H100", 80 * 1024, 700, Decimal("5.30"), 88_334),         # 3.00 + 1.60 + 0.70; 88333.3
    ("M3 Ultra", 192 * 1024, 0, Decimal("5.04"), 84_000),     # 1.20 + 3.84; exactly 84000
    ("M2 Ultra", 0, 0, Decimal("1.00"), 16_667),
    ("Some New GPU", 0, 0, DEFAULT_BASE_RATE, 4_167),        # 0.25 default; 4166.6
])
def test_seed_rates(model: str, vram_mib: int, watts: int, hourly: Decimal, per_minute: int) -> None:
    price = hourly_price(PriceInputs(model, vram_mib, watts))
    assert price == hourly
    assert rate_per_minute(price, decimals=6) == per_minute


def test_multiplier_is_clamped() -> None:
    gpu = PriceInputs("A100", 0, 0)
    assert hourly_price(gpu, Decimal("10")) == Decimal("4.00")
    assert hourly_price(gpu, Decimal("0.1")) == Decimal("1.00")
    assert hourly_price(gpu, Decimal("1.5")) == Decimal("3.00")
    assert demand_multiplier(10, 5) == Decimal(2)
    assert demand_multiplier(1, 5) == Decimal("0.5")
    assert demand_multiplier(3, 4) == Decimal("0.75")
    assert demand_multiplier(3, 0) == Decimal("2.0")
    with pytest.raises(PricingError):
        demand_multiplier(-1, 1)
    with pytest.raises(PricingError):
        hourly_price(gpu, Decimal("NaN"))


def test_decimals_are_read_not_assumed() -> None:
    assert rate_per_minute(Decimal("0.60"), decimals=9) == 10_000_000
    assert rate_per_minute(Decimal("0.60"), decimals=6) == 10_000
    assert rate_per_minute(Decimal("0.60"), decimals=0) == 1
    assert to_base_units(Decimal("1.5"), 6) == 1_500_000
    with pytest.raises(PricingError):
        to_base_units(Decimal(1), 19)


def test_fee_and_estimate() -> None:
    assert fee_for(1_430_040, 500) == 71_502
    assert fee_for(19, 500) == 0  # rounded down: 0.95
    est = estimate(23_834, 60)
    assert (est.total, est.fee, est.provider_net) == (1_430_040, 71_502, 1_358_538)
    with pytest.raises(PricingError):
        estimate(0, 10)
    with pytest.raises(PricingError):
        fee_for(10, 10_001)


@given(st.decimals(min_value=0, max_value=10_000, places=6), st.integers(0, 12))
def test_rate_per_minute_never_undercharges(hourly: Decimal, decimals: int) -> None:
    rate = rate_per_minute(hourly, decimals)
    assert isinstance(rate, int) and rate >= 1
    assert rate * 60 >= hourly * 10**decimals
    assert (rate - 1) * 60 < hourly * 10**decimals or rate == 1
