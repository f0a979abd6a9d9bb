"""The node's Prometheus metrics: one registry per process, names shared with deploy/grafana.

Two kinds of figures, none of them invented:

- events the services report as they happen (ledger calls and their latency through
  ``InstrumentedLedger``, metered minutes through the meter, claimed minutes, earnings and fees,
  ended rentals, HTTP latencies) are counters and histograms: :class:`NodeMetrics` implements the
  recorder ports of ``dgpu.node.ports.metrics``;
- state the node already keeps (peers, the offer book, the offer validator's verdicts, the
  negotiator's outcomes, jobs and rentals by state, the GPUs' latest samples and leases) is read
  at scrape time from a :class:`RuntimeStats` snapshot, so there is one source of truth and
  nothing to keep in sync. libp2p's connections and streams are another collector over the host
  (``adapters.p2p_metrics``), registered by the app.

Labels have small, fixed value sets (reason codes, states, the node's own GPUs), and known label
values are exported at zero before anything happens, so a query never finds a series missing.
Units are base units (``promtool check metrics``): seconds of rental time (a billed minute is 60),
bytes, watts, degrees Celsius, ratios; money in the token's base units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dgpu.node.services.billing import STOPPED_EXHAUSTED, STOPPED_RENTER_CLOSED
from dgpu.node.services.gpu_monitor import GpuReading
from dgpu.node.services.instrumented_ledger import LEDGER_ACTIONS
from dgpu.node.services.offer_sync import SyncCounts
from dgpu.node.services.offers import REFUSALS
from dgpu.protocol.ledger import EscrowReceipt
from dgpu.protocol.messages import RejectCode

__all__ = ["NEGOTIATION_OUTCOMES", "RENTAL_STATES", "NodeMetrics", "RuntimeStats", "negotiation_labels"]

# no ``*_created`` series beside every counter and histogram: they double the exposition and
# no dashboard or alert here reads them (prometheus_client's own switch, process-wide)
disable_created_metrics()  # type: ignore[no-untyped-call]

#: seconds of rental time in one billed (ledger) minute
MINUTE_S = 60
#: how a provider's negotiations end besides a reject code (``ProviderNegotiator.outcomes``)
NEGOTIATION_OUTCOMES = ("agreed", "abandoned", "renter_declined", "stream_error")
#: a provider's rentals: agreed (GPUs leased, job not submitted yet) and billing (job running)
RENTAL_STATES = ("agreed", "billing")
#: how a billed rental ended: settled at its end, the renter closed the escrow, the escrow ran out
RENTAL_ENDINGS = ("settled", "renter_closed", "exhausted")


def negotiation_labels(outcome: str) -> tuple[str, str]:
    """``(outcome, code)`` of a negotiator outcome: a reject code becomes ``("rejected", code)``."""
    return (outcome, "") if outcome in NEGOTIATION_OUTCOMES else ("rejected", outcome)


@dataclass(frozen=True)
class RuntimeStats:
    """What the node knows right now (read when Prometheus scrapes)."""

    peers: int = 0
    offer_book_size: int = 0
    offers_accepted: int = 0
    offers_rejected: Mapping[str, int] = field(default_factory=dict)
    #: what the node's offer syncs brought in
    offer_sync: SyncCounts = field(default_factory=SyncCounts)
    #: provider-side negotiation outcomes ("agreed", reject codes, ...); None: not a provider
    negotiations: Mapping[str, int] | None = None
    jobs: Mapping[str, int] = field(default_factory=dict)
    #: provider: rentals by state (RENTAL_STATES)
    rentals: Mapping[str, int] = field(default_factory=dict)
    #: provider: every offered GPU, its lease and latest sample
    gpus: tuple[GpuReading, ...] = ()


def _gpu_families(gpus: tuple[GpuReading, ...]) -> Iterator[Metric]:
    labels = ["uuid", "model"]
    leased = GaugeMetricFamily("dgpu_gpu_leased", "1 while a rental's lease holds the GPU, 0 when free", labels=labels)
    util = GaugeMetricFamily("dgpu_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=labels)
    memory = GaugeMetricFamily("dgpu_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=labels)
    power = GaugeMetricFamily("dgpu_gpu_power_watts", "GPU power draw (NVML)", labels=labels)
    temp = GaugeMetricFamily("dgpu_gpu_temperature_celsius", "GPU core temperature (NVML)", labels=labels)
    for g in gpus:
        key = [g.uuid, g.model]
        leased.add_metric(key, 1 if g.leased else 0)
        s = g.sample
        if s is None:
            continue  # simulated, or not sampled yet: no figure rather than an invented one
        if s.utilization_pct is not None:
            util.add_metric(key, s.utilization_pct / 100)
        if s.memory_used_bytes is not None:
            memory.add_metric(key, s.memory_used_bytes)
        if s.power_draw_mw is not None:
            power.add_metric(key, s.power_draw_mw / 1000)
        if s.temperature_c is not None:
            temp.add_metric(key, s.temperature_c)
    yield from (leased, util, memory, power, temp)


class _RuntimeCollector(Collector):
    def __init__(self, view: Callable[[], RuntimeStats]) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        stats = self.view()
        peers = GaugeMetricFamily("dgpu_peers", "Connected libp2p peers")
        peers.add_metric([], stats.peers)
        book = GaugeMetricFamily("dgpu_offer_book_size", "Live offers in the book")
        book.add_metric([], stats.offer_book_size)
        seen = CounterMetricFamily("dgpu_offers_seen", "Offers accepted into the offer book")
        seen.add_metric([], stats.offers_accepted)
        rejected = CounterMetricFamily("dgpu_offers_rejected", "Offers refused by the topic validator",
                                       labels=["reason"])
        for reason, n in sorted(({r: 0 for r in REFUSALS} | dict(stats.offers_rejected)).items()):
            rejected.add_metric([reason], n)
        synced = CounterMetricFamily(
            "dgpu_offers_synced", "Offers accepted from neighbours' offer books (offer sync) by why the neighbour "
            "was asked: join (first seen) or refresh (drawn now and then; such an offer had not come by gossip)",
            labels=["reason"])
        synced.add_metric(["join"], stats.offer_sync.join)
        synced.add_metric(["refresh"], stats.offer_sync.refresh)
        refreshes = CounterMetricFamily("dgpu_offer_sync_refreshes", "Offer syncs asked of a random neighbour")
        refreshes.add_metric([], stats.offer_sync.refreshes)
        yield from (peers, book, seen, rejected, synced, refreshes)
        if stats.negotiations is not None:
            negotiations = CounterMetricFamily(
                "dgpu_negotiations", "Negotiations by role and outcome (code: the reject code of a rejected one)",
                labels=["role", "outcome", "code"])
            known = {o: 0 for o in NEGOTIATION_OUTCOMES} | {str(c): 0 for c in RejectCode}
            for outcome, n in sorted((known | dict(stats.negotiations)).items()):
                negotiations.add_metric(["provider", *negotiation_labels(outcome)], n)
            yield negotiations
        jobs = GaugeMetricFamily("dgpu_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(stats.jobs.items()):
            jobs.add_metric([state], n)
        rentals = GaugeMetricFamily("dgpu_rentals", "A provider's rentals by state", labels=["state"])
        for state, n in sorted(stats.rentals.items()):
            rentals.add_metric([state], n)
        yield from (jobs, rentals)
        yield from _gpu_families(stats.gpus)


class NodeMetrics:
    """Every metric the node exports. Create one per process (tests create their own).

    It is the recorder of ``dgpu.node.ports.metrics`` (``ledger_call``, ``minute_metered``) and of
    the provider's receipts (:meth:`receipt`) and ended rentals (:meth:`rental_ended`)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 runtime: Callable[[], RuntimeStats] = RuntimeStats) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runtime = _RuntimeCollector(runtime)
        r.register(self.runtime)
        self.metered = Counter("dgpu_rental_metered_seconds", "Rental time the meter recorded (60 per minute)",
                               registry=r)
        self.claimed = Counter("dgpu_rental_claimed_seconds", "Rental time paid out of escrows (60 per minute)",
                               registry=r)
        self.earned = Counter("dgpu_earned_base_units", "Base units received by this provider", registry=r)
        self.fees = Counter("dgpu_fees_base_units", "Platform fees taken from this provider's gross, base units",
                            registry=r)
        self.rentals_ended = Counter("dgpu_rentals_ended", "A provider's billed rentals by how they ended",
                                     ["outcome"], registry=r)
        for ending in RENTAL_ENDINGS:
            self.rentals_ended.labels(ending)
        self.ledger_calls = Counter("dgpu_ledger_calls", "Escrow ledger calls by action and outcome",
                                    ["action", "outcome"], registry=r)
        for action in LEDGER_ACTIONS:
            self.ledger_calls.labels(action, "ok")
        self.ledger_latency = Histogram("dgpu_ledger_call_duration_seconds", "Escrow ledger call latency",
                                        ["action"], registry=r,
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.http_latency = Histogram("dgpu_http_request_seconds", "Local API latency", ["route", "method", "status"],
                                      registry=r, buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0))

    def set_runtime(self, view: Callable[[], RuntimeStats]) -> None:
        """Read live state from ``view`` at every scrape."""
        self.runtime.view = view

    def register(self, collector: Collector) -> None:
        """Another scrape-time collector (the libp2p host's)."""
        self.registry.register(collector)

    # -- the recorder ports ------------------------------------------------------------------------
    def ledger_call(self, action: str, outcome: str, seconds: float) -> None:
        self.ledger_calls.labels(action, outcome).inc()
        self.ledger_latency.labels(action).observe(seconds)

    def minute_metered(self, job_id: str) -> None:
        del job_id  # per-job series would grow without bound
        self.metered.inc(MINUTE_S)

    def receipt(self, receipt: EscrowReceipt, rate_per_minute: int | None) -> None:
        """A provider's receipt: what it was paid and the fee; the minutes that bought, when the
        rental's rate is known (``None``: only the money is counted, never a guessed duration)."""
        if receipt.paid or receipt.fee:
            if rate_per_minute:
                self.claimed.inc((receipt.paid + receipt.fee) // rate_per_minute * MINUTE_S)
            self.earned.inc(receipt.paid)
            self.fees.inc(receipt.fee)

    def rental_ended(self, stopped_for: str | None) -> None:
        """A billed rental ended: ``stopped_for`` is ``ProviderBillingResult.stopped_for``."""
        ending = {None: "settled", STOPPED_RENTER_CLOSED: "renter_closed", STOPPED_EXHAUSTED: "exhausted"}
        self.rentals_ended.labels(ending.get(stopped_for, "exhausted")).inc()
