"""This node's provider profile and pause switch, as the local API changes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dgpu.node.services.api.errors import ApiError, Forbidden
from dgpu.node.services.api.schema import ProviderProfile
from dgpu.protocol.messages import GpuSpec, Offer

if TYPE_CHECKING:
    from dgpu.node.services.publisher import OfferPublisher

__all__ = ["ProviderControl"]


class ProviderControl:
    """The provider API's view of this node's offer, through the ``OfferPublisher``'s own methods:
    the publisher owns the offer's terms and the pause, the inventory the GPUs and their price.

    Pausing publishes a signed withdrawal (peers drop the offer at once), stops publishing and
    makes the negotiator answer ``no_capacity`` to new requests; running jobs are not touched.
    """

    def __init__(self, publisher: OfferPublisher, *, development: bool) -> None:
        self.publisher = publisher
        self.development = development

    @property
    def paused(self) -> bool:
        return self.publisher.paused

    def current(self) -> Offer:
        return self.publisher.current or self.publisher.profile()

    def update(self, profile: ProviderProfile) -> Offer:
        """Apply ``profile``, validate the resulting offer, republish soon; raises ApiError."""
        gpus = None
        if profile.gpus is not None:
            if any(g.simulated for g in profile.gpus) and not self.development:
                raise Forbidden("simulated GPUs are allowed on development networks only",
                                "simulated_not_allowed")
            if not all(g.simulated for g in profile.gpus):
                raise Forbidden("GPUs come from the node's inventory (NVML); only simulated GPUs "
                                "may be declared through the API", "real_gpus_from_inventory")
            gpus = tuple(GpuSpec(**g.model_dump()) for g in profile.gpus)
        if profile.executors is not None and len(set(profile.executors)) != len(profile.executors):
            raise ApiError("duplicate executor", "invalid_request")
        try:
            return self.publisher.update_profile(price_per_gpu_minute=profile.price_per_gpu_minute,
                                                 region=profile.region, gpus=gpus, executors=profile.executors)
        except ValueError as exc:
            raise ApiError(f"that profile makes an invalid offer: {exc}", "invalid_request") from None

    def set_paused(self, paused: bool) -> None:
        if paused:
            self.publisher.pause()
        else:
            self.publisher.resume()
