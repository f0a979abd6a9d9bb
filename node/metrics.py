"""The node's Prometheus metrics: one registry per process, names shared with deploy/grafana.

Two kinds of figures, none of them invented:

- events the services report as they happen (minutes billed, claims, earnings, ledger calls,
  HTTP latencies) are counters and histograms that the code increments;
- state the node already keeps (peers, the offer book, the offer validator's verdicts, the
  negotiator's outcomes, jobs by state) is read at scrape time from a :class:`RuntimeStats`
  snapshot, so there is one source of truth and nothing to keep in sync.

Labels have small, fixed value sets (reason codes, states), so cardinality stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["NodeMetrics", "RuntimeStats"]


@dataclass(frozen=True)
class RuntimeStats:
    """What the node knows right now (read when Prometheus scrapes)."""

    peers: int = 0
    offer_book_size: int = 0
    offers_accepted: int = 0
    offers_rejected: Mapping[str, int] = field(default_factory=dict)
    #: provider-side negotiation outcomes ("agreed", reject codes, ...)
    negotiations: Mapping[str, int] = field(default_factory=dict)
    jobs: Mapping[str, int] = field(default_factory=dict)


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
        for reason, n in sorted(stats.offers_rejected.items()):
            rejected.add_metric([reason], n)
        negotiations = CounterMetricFamily("dgpu_negotiations", "Negotiations by role and outcome",
                                           labels=["role", "outcome"])
        for outcome, n in sorted(stats.negotiations.items()):
            negotiations.add_metric(["provider", outcome], n)
        jobs = GaugeMetricFamily("dgpu_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(stats.jobs.items()):
            jobs.add_metric([state], n)
        yield from (peers, book, seen, rejected, negotiations, jobs)


class NodeMetrics:
    """Every metric the node exports. Create one per process (tests create their own)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 runtime: Callable[[], RuntimeStats] = RuntimeStats) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runtime = _RuntimeCollector(runtime)
        r.register(self.runtime)
        self.minutes_billed = Counter("dgpu_minutes_billed_total", "Rental minutes paid out of escrows", registry=r)
        self.claims = Counter("dgpu_claims_total", "Escrow claims by outcome", ["outcome"], registry=r)
        self.earned = Counter("dgpu_earned_base_units_total", "Base units received by this provider", registry=r)
        self.ledger_calls = Counter("dgpu_ledger_calls_total", "Ledger calls by operation and outcome",
                                    ["operation", "outcome"], registry=r)
        self.http_latency = Histogram("dgpu_http_request_seconds", "Local API latency", ["route", "method", "status"],
                                      registry=r, buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0))

    def set_runtime(self, view: Callable[[], RuntimeStats]) -> None:
        """Read live state from ``view`` at every scrape."""
        self.runtime.view = view
