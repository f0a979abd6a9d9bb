"""This node's provider profile and pause switch, as the local API changes them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from dgpu.node.services.api.errors import ApiError, Forbidden
from dgpu.node.services.api.schema import ProviderProfile
from dgpu.protocol.messages import GpuSpec, Offer

if TYPE_CHECKING:
    from dgpu.node.services.negotiation import ProviderNegotiator
    from dgpu.node.services.offers import OfferPublisher

__all__ = ["ProviderControl"]


class ProviderControl:
    """Wraps this node's ``OfferPublisher`` and ``ProviderNegotiator`` (owned by the network
    layer) to change the offered profile and to pause/resume offering.

    Pausing stops publishing (the publisher's send is gated: a paused node sends nothing, peers
    drop the last offer when it expires, at most ``offer_ttl_s`` later) and makes the
    negotiator answer ``no_capacity`` to new requests; running jobs are not touched.
    """

    def __init__(self, publisher: OfferPublisher, negotiator: ProviderNegotiator | None, *,
                 development: bool) -> None:
        self.publisher = publisher
        self.negotiator = negotiator
        self.development = development
        self.paused = False
        self._base_template = publisher.template
        self._overrides: dict[str, Any] = {}
        publish = publisher._publish  # the network layer's send; we gate it, never replace it

        async def gated(data: bytes) -> None:
            if not self.paused:
                await publish(data)

        publisher._publish = gated
        publisher.template = self._template
        if negotiator is not None:
            running = negotiator.running_jobs

            def running_or_full() -> int:
                return negotiator.policy.max_concurrent_jobs if self.paused else running()

            negotiator.running_jobs = running_or_full

    def _template(self) -> Offer:
        return self._base_template().model_copy(update=self._overrides)

    def current(self) -> Offer:
        return self.publisher.current or self._template()

    def update(self, profile: ProviderProfile) -> Offer:
        """Apply ``profile``, validate the resulting offer, republish soon; raises ApiError."""
        overrides = dict(self._overrides)
        if profile.price_per_gpu_minute is not None:
            overrides["price_per_minute"] = profile.price_per_gpu_minute
        if profile.region is not None:
            overrides["region"] = profile.region
        if profile.gpus is not None:
            if any(g.simulated for g in profile.gpus) and not self.development:
                raise Forbidden("simulated GPUs are allowed on development networks only",
                                "simulated_not_allowed")
            if not all(g.simulated for g in profile.gpus):
                raise Forbidden("GPUs come from the node's inventory (NVML); only simulated GPUs "
                                "may be declared through the API", "real_gpus_from_inventory")
            overrides["gpus"] = tuple(GpuSpec(**g.model_dump()) for g in profile.gpus)
        if profile.executors is not None:
            if len(set(profile.executors)) != len(profile.executors):
                raise ApiError("duplicate executor", "invalid_request")
            overrides["executors"] = profile.executors
        candidate = self._base_template().model_copy(update=overrides)
        try:
            Offer.model_validate(candidate.model_dump())
        except ValueError as exc:
            raise ApiError(f"that profile makes an invalid offer: {exc}", "invalid_request") from None
        self._overrides = overrides
        if self.negotiator is not None:
            policy = self.negotiator.policy
            self.negotiator.policy = dataclasses.replace(
                policy,
                price_floor_per_gpu_minute=overrides.get("price_per_minute",
                                                         policy.price_floor_per_gpu_minute),
                executors=tuple(overrides.get("executors", policy.executors)))
        self.publisher.changed()
        return candidate

    def set_paused(self, paused: bool) -> None:
        was, self.paused = self.paused, paused
        if was and not paused:
            self.publisher.changed()  # publish again now, not at the next interval
