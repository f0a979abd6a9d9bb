"""One offer as a renter sees it (:class:`OfferInfo`)."""

from __future__ import annotations

from dataclasses import dataclass

from dgpu.protocol.messages import Offer

__all__ = ["OfferInfo"]


@dataclass(frozen=True, slots=True)
class OfferInfo:
    """One offer as a renter sees it (prices per GPU-minute, in base units)."""

    offer: Offer
    peer_id: str

    @property
    def provider(self) -> str:
        return self.offer.provider

    @property
    def gpu_model(self) -> str:
        return self.offer.gpus[0].model

    @property
    def vram_mib(self) -> int:
        return self.offer.gpus[0].vram_mib

    @property
    def price_per_minute(self) -> int:
        return self.offer.price_per_minute

    @property
    def simulated(self) -> bool:
        return self.offer.simulated
