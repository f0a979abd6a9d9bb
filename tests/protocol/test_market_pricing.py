"""The market multiplier, the engine's stated inputs, the offer's optional fields and the
receipt/escrow reconciler (pure)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dgpu.protocol.errors import PricingError
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import GpuSpec, Offer, PriceBasis, UsageReceipt
from dgpu.protocol.pricing import MultiplierBounds, PriceInputs, market_multiplier, priced
from dgpu.protocol.reconcile import metered_minutes, reconcile

WALLET = SigningKey(b"k" * 32).public_key.wallet


@pytest.mark.parametrize(("demand", "supply", "bounds", "bps"), [
    (0, 1, MultiplierBounds(), 5_000),
    (1, 1, MultiplierBounds(), 10_000),
    (3, 2, MultiplierBounds(), 15_000),
    (1, 3, MultiplierBounds(), 5_000),
    (2, 3, MultiplierBounds(), 6_667),  # 0.666.. to the nearest basis point
    (9, 1, MultiplierBounds(), 20_000),
    (0, 0, MultiplierBounds(), 20_000),
    (0, 1, MultiplierBounds(Decimal("0.8"), Decimal("1.5")), 8_000),
    (9, 1, MultiplierBounds(Decimal("0.8"), Decimal("1.5")), 15_000),
])
def test_market_multiplier(demand: int, supply: int, bounds: MultiplierBounds, bps: int) -> None:
    assert market_multiplier(demand, supply, bounds) == bps


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_the_multiplier_stays_in_the_band(demand: int, supply: int) -> None:
    band = MultiplierBounds(Decimal("0.9"), Decimal("1.1"))
    assert 9_000 <= market_multiplier(demand, supply, band) <= 11_000


@pytest.mark.parametrize("text", ["0.4:1.0", "1.0:2.5", "1.5:1.0", "1.0", "a:b"])
def test_bad_bounds_are_refused(text: str) -> None:
    with pytest.raises(PricingError):
        MultiplierBounds.parse(text)


def test_priced_states_the_engine_rate_and_the_multiplied_rate() -> None:
    p = priced(PriceInputs("H100", 80 * 1024, 700), 15_000, 6)
    assert (p.engine_rate, p.rate) == (88_334, 132_500)  # 5.30/h; x1.5 = 7.95/h
    with pytest.raises(PricingError):
        priced(PriceInputs("H100", 1), 4_999, 6)


def _offer(**kw: object) -> Offer:
    return Offer(provider=WALLET, gpus=(GpuSpec(model="H100", vram_mib=81_920, count=2),), price_per_minute=44_167,
                 mint=WALLET, ledger="dev", seq=1, issued_at=10, expires_at=20, **kw)  # type: ignore[arg-type]


def test_an_offer_without_the_new_fields_keeps_its_old_wire_form() -> None:
    old = _offer()
    assert "pricing" not in old.model_dump(mode="json") and "free_gpus" not in old.model_dump(mode="json")
    new = _offer(pricing=PriceBasis(source="engine", model="H100", vram_mib=81_920, power_limit_w=700,
                                    engine_rate=88_334, multiplier_bps=5_000, demand=0, supply=1, window_s=900),
                 free_gpus=1)
    assert Offer.model_validate(new.model_dump(mode="json")) == new
    with pytest.raises(ValueError, match="free_gpus"):
        _offer(free_gpus=3)


def _receipt(minute: int) -> UsageReceipt:
    return UsageReceipt(job_id="ab" * 8, agreement_id="cd" * 32, minute_index=minute, minutes_total=minute + 1, at=1)


@pytest.mark.parametrize(("metered", "accrued", "claimed", "may_claim", "flagged"), [
    (3, 3, 0, True, False),   # every accrued minute metered: claim
    (2, 3, 0, False, False),  # one accrued minute not metered yet: wait (within the slack)
    (1, 3, 0, False, True),   # two behind: the renter flags it
    (3, 3, 3, False, False),  # nothing left to claim
    (1, 5, 5, False, True),   # claimed far more than metered
])
def test_reconcile(metered: int, accrued: int, claimed: int, may_claim: bool, flagged: bool) -> None:
    check = reconcile([_receipt(i) for i in range(metered)], accrued=accrued, claimed=claimed)
    assert (check.may_claim, check.over_accrued) == (may_claim, flagged)


def test_a_receipt_sent_twice_counts_once() -> None:
    assert metered_minutes([_receipt(0), _receipt(0), _receipt(1)]) == 2
