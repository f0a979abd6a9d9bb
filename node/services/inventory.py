"""The provider's GPUs: what it offers, at what price, and which agreement holds which GPU.

Rules of the inventory (one owner of this state; the offer, the negotiator, the job stream and
the meter only read it):

- The GPUs come from a source port once at start (NVML, or on a development network only the
  simulated GPUs of ``--simulated-gpu``); the offer lists them (:meth:`Inventory.offered`) at
  :attr:`Inventory.price_per_gpu_minute`, with :attr:`Inventory.pricing` saying what produced it
  (the market pricer's engine price, or the provider's override, which the pricer never replaces).
- Every lease taken or released tells the watcher (the offer publisher: capacity is in the offer).
- One lease per agreement, at most ``max_jobs`` at once; a lease holds ``request.gpu_count``
  distinct GPUs that match the request (model, VRAM) and no other lease holds (zero GPUs for a
  CPU-only request, which still takes a job slot).
- A lease is taken when the provider signs the agreement and *lapses* at the agreement's start
  deadline (on the ledger's clock) unless the job was submitted by then (:meth:`Inventory.hold`);
  a held lease is released when the job ends (:meth:`Inventory.release`, idempotent).

Theory of operation (one path for the GPU ids): negotiator ``lease(agreement)`` → job stream
``lease_of(agreement).device_ids`` → ``JobSpec.gpu_uuids`` → the executor exposes exactly those
GPUs → the meter samples exactly those (simulated GPUs have no device: none reach the job).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dgpu.node.ports.gpu import GpuInfo, simulated_gpus
from dgpu.protocol.messages import GpuSpec, JobRequest, PriceBasis

__all__ = ["GpuLease", "Inventory", "select_gpus"]

#: an offer lists at most this many GPU kinds (the Offer message's bound)
MAX_KINDS = 16


@dataclass(frozen=True, slots=True)
class GpuLease:
    """The GPUs one agreement holds. ``uuids`` are distinct and held by no other lease."""

    agreement_id: str
    uuids: tuple[str, ...]
    #: the GPUs are a development network's simulated ones: they exist only in the offer
    simulated: bool = False

    @property
    def device_ids(self) -> tuple[str, ...]:
        """What the executor exposes to the job and the meter samples (``JobSpec.gpu_uuids``):
        the leased GPUs, or none for simulated ones (no device to hand to a container)."""
        return () if self.simulated else self.uuids


@dataclass(slots=True)
class _Held:
    lease: GpuLease
    #: the agreement's start deadline (ledger clock) while its job is not submitted; None after
    lapses_at: int | None


def select_gpus(gpus: Sequence[GpuInfo], selectors: Sequence[str]) -> tuple[GpuInfo, ...]:
    """The GPUs ``--gpu UUID|INDEX`` names (all of them without selectors), in index order.

    Raises ValueError naming a selector that matches no GPU (a typo must not offer nothing)."""
    if not selectors:
        return tuple(gpus)
    picked: set[int] = set()
    for sel in selectors:
        hits = [i for i, g in enumerate(gpus) if sel.casefold() in (g.uuid.casefold(), str(g.index))]
        if not hits:
            known = ", ".join(f"{g.index}={g.uuid}" for g in gpus) or "none"
            raise ValueError(f"--gpu {sel!r} matches no GPU (found: {known})")
        picked.update(hits)
    return tuple(g for i, g in enumerate(gpus) if i in picked)


def _matches(gpu: GpuInfo, request: JobRequest) -> bool:
    want = request.gpu_model.casefold() if request.gpu_model else None
    return (want is None or gpu.model.casefold() == want) and gpu.vram_mib >= request.min_vram_mib


class Inventory:
    """Owns this provider's GPUs, their price and one lease per agreement."""

    def __init__(self, gpus: Sequence[GpuInfo], *, owner: str, price_per_gpu_minute: int, max_jobs: int,
                 clock: Callable[[], int], pricing: PriceBasis | None = None) -> None:
        if price_per_gpu_minute <= 0 or max_jobs < 1:
            raise ValueError("the price and the job slots must be positive")
        self._pricing = pricing
        self._watchers: list[Callable[[], None]] = []
        #: the wallet whose simulated GPUs these are (their fake UUIDs derive from it)
        self.owner = owner
        self.max_jobs = max_jobs
        #: the ledger's clock: leases lapse at agreements' start deadlines, which are set on it
        self._clock = clock
        self._gpus = tuple(gpus)
        self._price = price_per_gpu_minute
        self._leases: dict[str, _Held] = {}

    # -- what is offered -------------------------------------------------------------------

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        return self._gpus

    @property
    def simulated(self) -> bool:
        return any(g.simulated for g in self._gpus)

    @property
    def price_per_gpu_minute(self) -> int:
        return self._price

    @property
    def pricing(self) -> PriceBasis | None:
        """What produced the price (None: a fixed price with no stated inputs)."""
        return self._pricing

    @property
    def price_overridden(self) -> bool:
        """The provider set the price itself: the market pricer leaves it alone."""
        return self._pricing is None or self._pricing.source == "override"

    def set_price(self, price_per_gpu_minute: int, pricing: PriceBasis | None = None) -> None:
        """Set the price; without ``pricing`` it is the provider's override from now on."""
        if price_per_gpu_minute <= 0:
            raise ValueError("the price must be positive")
        if pricing is None and self._pricing is not None:
            pricing = self._pricing.model_copy(update={"source": "override", "multiplier_bps": 10_000})
        self._price = price_per_gpu_minute
        self._pricing = pricing

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` whenever a lease is taken, lapses or is released (capacity moved)."""
        self._watchers.append(on_change)

    def _changed(self) -> None:
        for notify in self._watchers:
            notify()

    def declare_simulated(self, specs: Sequence[GpuSpec]) -> None:
        """Replace a simulated inventory's GPUs (development networks, through the provider API).

        Refused (ValueError) for real GPUs, which come from NVML only. Leases already granted keep
        their GPUs until they end."""
        if not all(s.simulated for s in specs) or (self._gpus and not self.simulated):
            raise ValueError("only a simulated inventory may be declared; real GPUs come from NVML")
        self._gpus = simulated_gpus(specs, owner=self.owner)

    def offered(self) -> tuple[GpuSpec, ...]:
        """The GPUs an offer lists: one entry per kind (model, VRAM, compute capability)."""
        kinds: dict[tuple[str, int, str | None, bool], int] = {}
        for g in self._gpus:
            key = (g.model, g.vram_mib, g.compute_capability, g.simulated)
            kinds[key] = kinds.get(key, 0) + 1
        return tuple(GpuSpec(model=m, vram_mib=v, count=min(n, 64), compute_capability=cc, simulated=sim)
                     for (m, v, cc, sim), n in list(kinds.items())[:MAX_KINDS])

    # -- leases ----------------------------------------------------------------------------

    def _lapse(self) -> None:
        now = self._clock()
        lapsed = [a for a, h in self._leases.items() if h.lapses_at is not None and h.lapses_at <= now]
        for agreement_id in lapsed:
            del self._leases[agreement_id]
        if lapsed:
            self._changed()

    def _leased(self) -> set[str]:
        return {u for h in self._leases.values() for u in h.lease.uuids}

    def _pick(self, request: JobRequest) -> tuple[str, ...] | None:
        taken = self._leased()
        free = [g.uuid for g in self._gpus if g.uuid not in taken and _matches(g, request)]
        return tuple(free[:request.gpu_count]) if len(free) >= request.gpu_count else None

    @property
    def leases(self) -> int:
        """Leases held now (job slots taken)."""
        self._lapse()
        return len(self._leases)

    @property
    def awaiting_jobs(self) -> int:
        """Leases of agreements whose job is not submitted yet (they lapse at the start deadline)."""
        self._lapse()
        return sum(1 for h in self._leases.values() if h.lapses_at is not None)

    def free(self) -> tuple[GpuInfo, ...]:
        """The GPUs no lease holds."""
        self._lapse()
        taken = self._leased()
        return tuple(g for g in self._gpus if g.uuid not in taken)

    def can_lease(self, request: JobRequest) -> bool:
        """A job slot is free and so are ``request.gpu_count`` GPUs that fit the request."""
        return self.leases < self.max_jobs and self._pick(request) is not None

    def lease(self, agreement_id: str, request: JobRequest, *, lapses_at: int) -> GpuLease | None:
        """Lease GPUs for ``request`` to the agreement until ``lapses_at`` (its start deadline);
        None when they are not free (nothing changes). One lease per agreement: asking again
        returns the lease it holds."""
        held = self._leases.get(agreement_id)
        if held is not None:
            return held.lease
        if not self.can_lease(request):
            return None
        picked = self._pick(request)
        assert picked is not None  # can_lease checked it, with no checkpoint in between
        simulated = {g.uuid for g in self._gpus if g.simulated}
        lease = GpuLease(agreement_id, picked, simulated=any(u in simulated for u in picked))
        self._leases[agreement_id] = _Held(lease, lapses_at)
        self._changed()
        return lease

    def lease_of(self, agreement_id: str) -> GpuLease | None:
        self._lapse()
        held = self._leases.get(agreement_id)
        return held.lease if held is not None else None

    def hold(self, agreement_id: str) -> GpuLease | None:
        """The agreement's job was submitted: its lease no longer lapses (released at the end)."""
        self._lapse()
        held = self._leases.get(agreement_id)
        if held is None:
            return None
        held.lapses_at = None
        return held.lease

    def restore(self, held: Iterable[tuple[str, Sequence[str]]]) -> None:
        """After a restart: the leases of jobs that are still running, (agreement id, GPU ids)."""
        for agreement_id, uuids in held:
            self._leases[agreement_id] = _Held(GpuLease(agreement_id, tuple(uuids)), None)

    def release(self, agreement_id: str) -> None:
        """The job ended (or never will): its GPUs are free again. Idempotent."""
        if self._leases.pop(agreement_id, None) is not None:
            self._changed()
