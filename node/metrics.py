"""The node's Prometheus metrics: one registry per process, names shared with deploy/grafana.

Services increment these; the HTTP adapter serves them at ``/metrics``. Labels have small,
fixed value sets (reason codes, states), so cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["NodeMetrics"]


class NodeMetrics:
    """Every metric the node exports. Create one per process (tests create their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.peers = Gauge("dgpu_peers", "Connected libp2p peers", registry=r)
        self.offers_seen = Counter("dgpu_offers_seen_total", "Offers accepted into the offer book", registry=r)
        self.offers_rejected = Counter("dgpu_offers_rejected_total", "Offers refused by the topic validator",
                                       ["reason"], registry=r)
        self.offer_book_size = Gauge("dgpu_offer_book_size", "Live offers in the book", registry=r)
        self.negotiations = Counter("dgpu_negotiations_total", "Negotiations by role and outcome",
                                    ["role", "outcome"], registry=r)
        self.jobs = Gauge("dgpu_jobs", "Jobs by state", ["state"], registry=r)
        self.minutes_billed = Counter("dgpu_minutes_billed_total", "Rental minutes metered", registry=r)
        self.claims = Counter("dgpu_claims_total", "Escrow claims by outcome", ["outcome"], registry=r)
        self.earned = Counter("dgpu_earned_base_units_total", "Base units received by this provider", registry=r)
        self.ledger_calls = Counter("dgpu_ledger_calls_total", "Ledger calls by operation and outcome",
                                    ["operation", "outcome"], registry=r)
        self.http_latency = Histogram("dgpu_http_request_seconds", "Local API latency", ["route", "method", "status"],
                                      registry=r, buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0))
