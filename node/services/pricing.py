"""The provider's market pricer: the engine's price times what the provider observes.

Rules: the rate is ``dgpu.protocol.pricing.priced`` of the inventory's priciest GPU kind (model
base rate + VRAM + power limit) at a demand/supply multiplier clamped to the provider's bounds
(inside [0.5, 2.0]). Supply = comparable offers (same model) in this node's offer book, its own
counted once; demand = job requests received over a sliding window plus rentals running now.
A provider's ``--price`` (or a price set through its API) overrides it: the pricer then leaves
the inventory's price alone. Theory of operation: the publisher calls :meth:`MarketPricer.reprice`
before each publication; the pricer samples the negotiator's request counter into a bounded
window, computes the multiplier and writes price + inputs into the inventory (its owner).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from dgpu.node.ports.gpu import GpuInfo
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.offers import OfferBook, OfferQuery
from dgpu.protocol.messages import PriceBasis
from dgpu.protocol.pricing import MultiplierBounds, PriceInputs, market_multiplier, priced

__all__ = ["MarketPricer", "engine_basis"]

#: window samples kept (one per republish; older ones fall out of the window anyway)
_MAX_SAMPLES = 1024


def _inputs(gpu: GpuInfo) -> PriceInputs:
    return PriceInputs(model=gpu.model, vram_mib=gpu.vram_mib, power_limit_w=(gpu.power_limit_mw or 0) // 1000)


def engine_basis(gpus: tuple[GpuInfo, ...], *, decimals: int, multiplier_bps: int = 10_000, demand: int = 0,
                 supply: int = 0, window_s: int = 0) -> tuple[int, PriceBasis]:
    """The engine's rate for the priciest GPU kind of ``gpus`` at ``multiplier_bps``, and its inputs."""
    if not gpus:
        raise ValueError("nothing to price")
    rated = [(priced(_inputs(g), multiplier_bps, decimals), g) for g in gpus]
    p, gpu = max(rated, key=lambda pg: pg[0].rate)
    inputs = _inputs(gpu)
    return p.rate, PriceBasis(source="engine", model=inputs.model, vram_mib=inputs.vram_mib,
                              power_limit_w=min(inputs.power_limit_w, 100_000), engine_rate=p.engine_rate,
                              multiplier_bps=p.multiplier_bps, demand=demand, supply=supply, window_s=window_s)


class MarketPricer:
    """Owns the observation window; writes the market price into the inventory."""

    def __init__(self, inventory: Inventory, book: OfferBook, *, own_wallet: str, decimals: int,
                 requests_seen: Callable[[], int], clock: Callable[[], float],
                 bounds: MultiplierBounds | None = None, window_s: int = 900) -> None:
        if window_s <= 0:
            raise ValueError("the window must be positive")
        self._inventory = inventory
        self._book = book
        self._own = own_wallet
        self._decimals = decimals
        self._requests_seen = requests_seen
        self._clock = clock
        self.bounds = bounds or MultiplierBounds()
        self.window_s = window_s
        #: (time, requests received so far), oldest first
        self._samples: deque[tuple[float, int]] = deque(maxlen=_MAX_SAMPLES)

    def demand(self) -> int:
        """Requests received over the window plus rentals running now."""
        now, seen = self._clock(), self._requests_seen()
        self._samples.append((now, seen))
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        return (seen - self._samples[0][1]) + self._inventory.leases

    def supply(self, model: str) -> int:
        """Comparable offers (same model) in the book, ours counted once."""
        others = {e.offer.provider for e in self._book.query(OfferQuery(gpu_model=model, include_simulated=True),
                                                              now=int(self._clock()))
                  if e.offer.provider != self._own}
        return len(others) + 1

    def reprice(self) -> None:
        """Recompute the market price (nothing changes while the provider overrides it)."""
        if self._inventory.price_overridden or not self._inventory.gpus:
            return
        model = engine_basis(self._inventory.gpus, decimals=self._decimals)[1].model
        demand, supply = self.demand(), self.supply(model)
        rate, basis = engine_basis(self._inventory.gpus, decimals=self._decimals,
                                   multiplier_bps=market_multiplier(demand, supply, self.bounds),
                                   demand=demand, supply=supply, window_s=self.window_s)
        self._inventory.set_price(rate, basis)
