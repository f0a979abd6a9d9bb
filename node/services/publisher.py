"""The provider's offer publisher: built from its terms and inventory, published at start, on
change and before it expires; withdrawn (a signed withdrawal) when the provider pauses or stops."""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from dgpu.node.services.inventory import Inventory
from dgpu.protocol.envelope import seal
from dgpu.protocol.ids import MAX_OFFER_BYTES, MAX_OFFER_TTL_S
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, GpuSpec, Offer, OfferWithdrawal

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["OfferPublisher", "OfferTerms"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class OfferTerms:
    """What a provider chooses for its offer besides the GPUs and their price (the inventory's)."""

    mint: str
    #: which ledger holds the escrow (the Offer's ``ledger``)
    ledger: str
    region: str = "local"
    executors: tuple[Executor, ...] = (Executor.SCRIPT,)
    #: where to dial us (at most 8 go into the offer)
    addrs: tuple[str, ...] = ()
    #: renters may forward TCP ports into their jobs / open shells in them (said in the offer)
    forward: bool = False
    shell: bool = False
    #: the Docker images renters may run (exact, or prefixes ending in ``*``; 16 go into the offer)
    images: tuple[str, ...] = ()


class OfferPublisher:
    """A provider's offer: published at start, on change and before it expires.

    The offer is built at each publication from the provider's :class:`OfferTerms` and its
    inventory (GPUs, price). ``seq`` is taken from the clock in milliseconds (and forced to
    increase), so a restarted provider's new offer still replaces the old one everywhere. The
    last ``recent`` offers are kept by ``seq``: a request may quote one a republish ago. Pausing
    publishes a signed :class:`OfferWithdrawal` with the next ``seq`` (peers drop the offer at
    once), nothing more is published until resumed, and the negotiator takes no new request (it
    reads :attr:`paused`). When :meth:`run` ends (the node stops) it withdraws the offer too.
    """

    def __init__(self, key: SigningKey, inventory: Inventory, terms: OfferTerms,
                 publish: Callable[[bytes], Awaitable[None]], *, clock: Clock,
                 clock_ms: Callable[[], int], ttl_s: int = 300, recent: int = 16,
                 reprice: Callable[[], None] | None = None) -> None:
        if not 60 <= ttl_s <= MAX_OFFER_TTL_S:
            raise ValueError("offer ttl must be 60 s .. 1 h")
        self.key = key
        self.inventory = inventory
        self._terms = terms
        self._publish = publish
        self.clock = clock
        self.clock_ms = clock_ms
        self.ttl_s = ttl_s
        self._seq = 0
        self.current: Offer | None = None
        #: the offers made recently, by seq, oldest first (bounded: older quotes are stale anyway)
        self._recent: OrderedDict[int, Offer] = OrderedDict()
        self._recent_max = recent
        self._paused = False
        self._wake = trio.Event()
        #: the market pricer: recomputes the inventory's price before each publication
        self._reprice = reprice
        inventory.watch(self.changed)  # capacity (free GPUs) is in the offer

    # -- profile ---------------------------------------------------------------------------

    @property
    def terms(self) -> OfferTerms:
        return self._terms

    @property
    def executors(self) -> tuple[Executor, ...]:
        """The executors offered now (an older offer a request quotes may list others)."""
        return self._terms.executors

    def profile(self, *, terms: OfferTerms | None = None, gpus: tuple[GpuSpec, ...] | None = None,
                price_per_gpu_minute: int | None = None) -> Offer:
        """The offer as it would be published now (or with the given changes), unsigned, seq 0.
        Raises ValueError when those make no valid offer (no GPUs, a bad region, ...)."""
        t = terms or self._terms
        now = self.clock()
        listed = self.inventory.offered() if gpus is None else gpus
        pricing = self.inventory.pricing
        if price_per_gpu_minute is not None and pricing is not None:
            pricing = pricing.model_copy(update={"source": "override", "multiplier_bps": 10_000})
        return Offer(provider=self.key.public_key.wallet, addrs=t.addrs[:8], gpus=listed,
                     price_per_minute=(self.inventory.price_per_gpu_minute if price_per_gpu_minute is None
                                       else price_per_gpu_minute),
                     mint=t.mint, ledger=t.ledger, region=t.region, executors=t.executors, seq=0,
                     issued_at=now, expires_at=now + self.ttl_s, pricing=pricing,
                     forward=True if t.forward else None, shell=True if t.shell else None,
                     images=t.images[:16] if Executor.DOCKER in t.executors else None,
                     free_gpus=min(len(self.inventory.free()), sum(g.count for g in listed)) if gpus is None else None)

    def update_profile(self, *, price_per_gpu_minute: int | None = None, region: str | None = None,
                       gpus: tuple[GpuSpec, ...] | None = None,
                       executors: tuple[Executor, ...] | None = None,
                       addrs: tuple[str, ...] | None = None) -> Offer:
        """Change what is offered and republish soon; omitted values stay. The whole change is
        checked first (ValueError, nothing changed): the price and simulated GPUs go to the
        inventory, the region, executors and addresses (relay reservations come and go) to the
        terms."""
        terms = replace(self._terms, region=region or self._terms.region,
                        executors=self._terms.executors if executors is None else executors,
                        addrs=self._terms.addrs if addrs is None else addrs)
        candidate = self.profile(terms=terms, gpus=gpus, price_per_gpu_minute=price_per_gpu_minute)
        if gpus is not None:
            self.inventory.declare_simulated(gpus)
        if price_per_gpu_minute is not None:
            self.inventory.set_price(price_per_gpu_minute)
        if terms != self._terms or gpus is not None or price_per_gpu_minute is not None:
            self.changed()  # the same addresses announced again need no publication
        self._terms = terms
        return candidate

    # -- pause -----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stop publishing and taking requests, and withdraw the offer soon (:meth:`run`);
        running jobs are not touched."""
        self._paused = True
        self.changed()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.changed()  # publish again now, not at the next interval

    # -- publishing ------------------------------------------------------------------------

    def offer_for_seq(self, seq: int) -> Offer | None:
        """One of our recent offers (what a renter's request quotes)."""
        return self._recent.get(seq)

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, self.clock_ms())
        return self._seq

    def make_withdrawal(self, reason: str = "stopped") -> bytes:
        """A signed withdrawal of every offer made so far (it carries the next ``seq``)."""
        now = self.clock()
        withdrawal = OfferWithdrawal.model_validate({"provider": self.key.public_key.wallet, "seq": self._next_seq(),
                                                     "issued_at": now, "reason": reason})
        return seal(withdrawal, self.key, nonce=secrets.token_bytes(16), issued_at=now,
                    expires_at=now + self.ttl_s)

    async def withdraw_now(self, reason: str = "stopped") -> bool:
        """Publish a withdrawal of the current offer; False (nothing sent) when none is out."""
        if self.current is None:
            return False
        data = self.make_withdrawal(reason)
        self.current = None
        await self._publish(data)
        return True

    def make(self) -> tuple[Offer, bytes]:
        if self._reprice is not None:
            self._reprice()
        now = self.clock()
        offer = self.profile().model_copy(update={"seq": self._next_seq(), "issued_at": now,
                                                  "expires_at": now + self.ttl_s})
        offer = Offer.model_validate(offer.model_dump())  # re-validate after model_copy
        data = seal(offer, self.key, nonce=secrets.token_bytes(16), issued_at=now,
                    expires_at=now + self.ttl_s)
        if len(data) > MAX_OFFER_BYTES:
            raise ValueError(f"offer is {len(data)} bytes; the limit is {MAX_OFFER_BYTES}")
        self._recent[offer.seq] = offer
        while len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)
        return offer, data

    async def publish_now(self) -> Offer | None:
        """Sign and publish the offer now; None (nothing sent) while paused."""
        if self._paused:
            return None
        offer, data = self.make()
        await self._publish(data)
        self.current = offer
        return offer

    def changed(self) -> None:
        """Inventory, price, addresses or the pause changed: republish soon (coalesced)."""
        self._wake.set()

    async def run(self, *, min_interval_s: float = 1.0, withdraw_timeout_s: float = 2.0,
                  task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish until cancelled; then withdraw the offer (shielded, at most
        ``withdraw_timeout_s``) so renters stop choosing a provider that is gone."""
        try:
            await self.publish_now()
            task_status.started()
            while True:
                # republish at 1/3 of the lifetime, so two republishes can be lost before expiry
                with trio.move_on_after(self.ttl_s / 3):
                    await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(min_interval_s)  # coalesce bursts of changes
                try:
                    if self._paused:
                        await self.withdraw_now("paused")
                    else:
                        await self.publish_now()
                except Exception:  # supervisor loop: a failed publish must not stop republishing
                    log.exception("offer publish failed; retrying at the next interval")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(withdraw_timeout_s):
                try:
                    await self.withdraw_now("stopped")
                except Exception as exc:  # the host may be closing: the offer then just expires
                    log.info("offer withdrawal on stop failed: %s", exc)
