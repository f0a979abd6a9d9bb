"""The Grafana dashboard queries only metrics the nodes really export (the Prometheus integration
test, ``tests/integration/metrics``, checks that every panel's queries return data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from dgpu.bootstrap.metrics import Metrics as BootstrapMetrics
from dgpu.node.adapters.p2p import P2PConfig, open_node
from dgpu.node.adapters.p2p_metrics import P2PCollector
from dgpu.node.adapters.p2p_relay import RelayLimits
from dgpu.node.metrics import NodeMetrics, RuntimeStats
from dgpu.node.services.offer_sync import SyncCounts
from dgpu.protocol.keys import SigningKey

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "dgpu-node.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported(registry: CollectorRegistry) -> set[str]:
    return {f.name + suffix for f in registry.collect() for suffix in SUFFIXES[f.type]}


def dashboard_metrics() -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {name for p in panels for t in p["targets"] for name in re.findall(r"\b(dgpu_\w+)", t["expr"])}


async def test_dashboard_metrics_exist() -> None:
    metrics = NodeMetrics(runtime=lambda: RuntimeStats(negotiations={}))  # a provider
    assert "dgpu_peers" in exported(metrics.registry) and "# HELP dgpu_peers" in generate_latest(
        metrics.registry).decode()
    names = exported(metrics.registry) | exported(BootstrapMetrics().registry)
    # libp2p's figures: a real host, with the relay (hop) side a bootstrap node has
    async with open_node(SigningKey(b"m" * 32), P2PConfig(gossip=None, relay=RelayLimits())) as node:
        p2p = CollectorRegistry()
        p2p.register(P2PCollector(node))
        names |= exported(p2p)
    used = dashboard_metrics()
    assert used, "the dashboard queries no dgpu metric"
    missing = used - names
    assert not missing, f"dashboard uses metrics no node exports: {sorted(missing)}"


def test_runtime_state_is_read_at_scrape_time() -> None:
    state = {"peers": 1}
    metrics = NodeMetrics(runtime=lambda: RuntimeStats(
        peers=state["peers"], offer_book_size=7, offers_accepted=12, offers_rejected={"bad_signature": 2},
        offer_sync=SyncCounts(join=9, refresh=1, refreshes=4),
        negotiations={"agreed": 3, "price_too_low": 1}, jobs={"running": 1, "finished": 4},
        rentals={"agreed": 1, "billing": 2}))
    text = generate_latest(metrics.registry).decode()
    for line in ['dgpu_peers 1.0', 'dgpu_offer_book_size 7.0', 'dgpu_offers_seen_total 12.0',
                 'dgpu_offers_rejected_total{reason="bad_signature"} 2.0',
                 'dgpu_offers_rejected_total{reason="stale_seq"} 0.0',
                 'dgpu_offers_synced_total{reason="join"} 9.0', 'dgpu_offers_synced_total{reason="refresh"} 1.0',
                 'dgpu_offer_sync_refreshes_total 4.0',
                 'dgpu_negotiations_total{code="",outcome="agreed",role="provider"} 3.0',
                 'dgpu_negotiations_total{code="price_too_low",outcome="rejected",role="provider"} 1.0',
                 'dgpu_negotiations_total{code="no_capacity",outcome="rejected",role="provider"} 0.0',
                 'dgpu_jobs{state="finished"} 4.0', 'dgpu_rentals{state="billing"} 2.0']:
        assert line in text, line
    state["peers"] = 5
    assert "dgpu_peers 5.0" in generate_latest(metrics.registry).decode()
    assert "dgpu_negotiations_total" not in generate_latest(NodeMetrics().registry).decode()  # not a provider
