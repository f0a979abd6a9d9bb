"""The pricing engine: hourly prices in dGPU (``Decimal``), rates in base units (``int``).

Theory of operation: an hourly price is
``(base rate of the GPU model + VRAM GiB x VRAM rate + power W x power rate) x multiplier``,
with the demand/supply multiplier clamped to [0.5, 2.0]. It converts to an integer rate per
minute of the mint's base units, rounded *up* so a provider never earns less than its price.
The platform fee is taken from the provider's gross at settlement, rounded down (see
:mod:`dgpu.protocol.escrow`). Floats never appear; ``Decimal`` only for the hourly figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext
from types import MappingProxyType

from .errors import PricingError

__all__ = [
    "DEFAULT_BASE_RATE",
    "DEFAULT_FEE_BPS",
    "GPU_BASE_RATES",
    "MAX_MULTIPLIER",
    "MIN_MULTIPLIER",
    "POWER_RATE_PER_WATT_HOUR",
    "VRAM_RATE_PER_GB_HOUR",
    "Estimate",
    "MultiplierBounds",
    "PriceInputs",
    "Priced",
    "demand_multiplier",
    "estimate",
    "fee_for",
    "hourly_price",
    "market_multiplier",
    "priced",
    "rate_per_minute",
    "to_base_units",
]

#: dGPU per hour for one GPU, by normalised model name (the seed's table)
GPU_BASE_RATES: Mapping[str, Decimal] = MappingProxyType({
    "RTX 4090": Decimal("0.50"),
    "RTX 4080": Decimal("0.40"),
    "RTX 3090": Decimal("0.30"),
    "RTX A6000": Decimal("0.80"),
    "L40S": Decimal("1.20"),
    "A100": Decimal("2.00"),
    "H100": Decimal("3.00"),
    "H200": Decimal("3.80"),
    "M3 Ultra": Decimal("1.20"),
    "M2 Ultra": Decimal("1.00"),
})
#: the rate of a model missing from the table
DEFAULT_BASE_RATE = Decimal("0.25")
VRAM_RATE_PER_GB_HOUR = Decimal("0.02")
POWER_RATE_PER_WATT_HOUR = Decimal("0.001")
MIN_MULTIPLIER = Decimal("0.5")
MAX_MULTIPLIER = Decimal("2.0")
#: the platform fee, 5 %, in basis points
DEFAULT_FEE_BPS = 500
_MIB_PER_GB = Decimal(1024)


@dataclass(frozen=True, slots=True)
class PriceInputs:
    """What a GPU's price depends on."""

    model: str
    vram_mib: int
    power_limit_w: int = 0


def demand_multiplier(demand: int, supply: int) -> Decimal:
    """``demand / supply`` clamped to [0.5, 2.0]; no supply at all is the maximum."""
    if demand < 0 or supply < 0:
        raise PricingError("demand and supply are counts (>= 0)")
    if supply == 0:
        return MAX_MULTIPLIER
    return min(max(Decimal(demand) / Decimal(supply), MIN_MULTIPLIER), MAX_MULTIPLIER)


@dataclass(frozen=True, slots=True)
class MultiplierBounds:
    """A provider's band for the demand/supply multiplier, inside [0.5, 2.0]."""

    low: Decimal = MIN_MULTIPLIER
    high: Decimal = MAX_MULTIPLIER

    def __post_init__(self) -> None:
        if not (self.low.is_finite() and self.high.is_finite()
                and MIN_MULTIPLIER <= self.low <= self.high <= MAX_MULTIPLIER):
            raise PricingError(f"multiplier bounds must satisfy {MIN_MULTIPLIER} <= low <= high <= {MAX_MULTIPLIER}")

    @classmethod
    def parse(cls, text: str) -> MultiplierBounds:
        """``"LOW:HIGH"`` (e.g. ``"0.8:1.5"``)."""
        low, sep, high = text.partition(":")
        try:
            if not sep:
                raise ValueError
            return cls(Decimal(low), Decimal(high))
        except (ValueError, ArithmeticError):
            raise PricingError(f"bad multiplier bounds {text!r}: expected LOW:HIGH, e.g. 0.8:1.5") from None


def market_multiplier(demand: int, supply: int, bounds: MultiplierBounds = MultiplierBounds()) -> int:
    """The demand/supply multiplier in basis points (10000 = 1.0), clamped to ``bounds``.

    Basis points, rounded to the nearest, so the multiplier an offer states reproduces its
    rate exactly (``demand / supply`` may not terminate)."""
    m = min(max(demand_multiplier(demand, supply), bounds.low), bounds.high)
    with localcontext() as ctx:
        ctx.prec = 60
        bps = int((m * 10_000).to_integral_value())
    low = int((bounds.low * 10_000).to_integral_value(rounding=ROUND_CEILING))
    high = int((bounds.high * 10_000).to_integral_value())
    return min(max(bps, low), high)


@dataclass(frozen=True, slots=True)
class Priced:
    """A GPU's rate per minute and what produced it."""

    engine_rate: int  #: base units per minute at multiplier 1
    multiplier_bps: int
    rate: int  #: base units per minute at the multiplier


def priced(gpu: PriceInputs, multiplier_bps: int, decimals: int,
           base_rates: Mapping[str, Decimal] = GPU_BASE_RATES) -> Priced:
    """The engine's rate for one GPU at ``multiplier_bps`` (what an offer's ``pricing`` states)."""
    if not 5_000 <= multiplier_bps <= 20_000:
        raise PricingError("the multiplier is 5000..20000 basis points")
    engine = rate_per_minute(hourly_price(gpu, Decimal(1), base_rates), decimals)
    rate = rate_per_minute(hourly_price(gpu, Decimal(multiplier_bps) / 10_000, base_rates), decimals)
    return Priced(engine_rate=engine, multiplier_bps=multiplier_bps, rate=rate)


def hourly_price(
    gpu: PriceInputs,
    multiplier: Decimal = Decimal(1),
    base_rates: Mapping[str, Decimal] = GPU_BASE_RATES,
) -> Decimal:
    """dGPU per hour for one GPU. ``multiplier`` is clamped to [0.5, 2.0]."""
    if gpu.vram_mib < 0 or gpu.power_limit_w < 0:
        raise PricingError("VRAM and power are non-negative")
    if not multiplier.is_finite():
        raise PricingError("the multiplier must be a finite number")
    clamped = min(max(multiplier, MIN_MULTIPLIER), MAX_MULTIPLIER)
    base = base_rates.get(gpu.model, DEFAULT_BASE_RATE)
    vram = Decimal(gpu.vram_mib) / _MIB_PER_GB * VRAM_RATE_PER_GB_HOUR
    power = Decimal(gpu.power_limit_w) * POWER_RATE_PER_WATT_HOUR
    return (base + vram + power) * clamped


def to_base_units(amount: Decimal, decimals: int) -> int:
    """Whole tokens (``Decimal``) to base units, rounded up."""
    if not 0 <= decimals <= 18:
        raise PricingError("a mint has 0..18 decimals")
    with localcontext() as ctx:
        ctx.prec = 60
        return int((amount * (Decimal(10) ** decimals)).to_integral_value(rounding=ROUND_CEILING))


def rate_per_minute(hourly: Decimal, decimals: int) -> int:
    """An hourly price in dGPU to an integer rate per minute in base units, rounded up (>= 1)."""
    if hourly < 0:
        raise PricingError("a price is non-negative")
    with localcontext() as ctx:
        ctx.prec = 60
        per_minute = hourly * (Decimal(10) ** decimals) / Decimal(60)
        return max(1, int(per_minute.to_integral_value(rounding=ROUND_CEILING)))


def fee_for(gross: int, fee_bps: int) -> int:
    """The platform's fee on ``gross`` base units: ``floor(gross * bps / 10000)``."""
    if gross < 0 or not 0 <= fee_bps <= 10_000:
        raise PricingError("gross >= 0 and 0 <= fee_bps <= 10000")
    return gross * fee_bps // 10_000


@dataclass(frozen=True, slots=True)
class Estimate:
    """The cost of ``minutes`` at ``rate_per_minute``, and how it splits at settlement."""

    rate_per_minute: int
    minutes: int
    total: int
    fee: int
    provider_net: int


def estimate(rate: int, minutes: int, fee_bps: int = DEFAULT_FEE_BPS) -> Estimate:
    """What a renter deposits for ``minutes`` and what the provider and the platform receive."""
    if rate <= 0 or minutes <= 0:
        raise PricingError("rate and minutes are positive")
    total = rate * minutes
    fee = fee_for(total, fee_bps)
    return Estimate(rate_per_minute=rate, minutes=minutes, total=total, fee=fee,
                    provider_net=total - fee)
