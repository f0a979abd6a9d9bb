"""The Grafana dashboard queries only metrics the node really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from dgpu.node.metrics import NodeMetrics, RuntimeStats

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "dgpu-node.json"


def test_dashboard_metrics_exist() -> None:
    metrics = NodeMetrics()
    families = {(f.name, f.type) for f in metrics.registry.collect()}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {name + suffix for name, kind in families for suffix in suffixes[kind]}
    assert "dgpu_peers" in exported and "# HELP dgpu_peers" in generate_latest(metrics.registry).decode()
    panels = json.loads(DASHBOARD.read_text())["panels"]
    used = {name for p in panels for t in p["targets"] for name in re.findall(r"\b(dgpu_\w+)", t["expr"])}
    assert used, "the dashboard queries no dgpu metric"
    missing = used - exported
    assert not missing, f"dashboard uses metrics the node does not export: {sorted(missing)}"


def test_runtime_state_is_read_at_scrape_time() -> None:
    state = {"peers": 1}
    metrics = NodeMetrics(runtime=lambda: RuntimeStats(
        peers=state["peers"], offer_book_size=7, offers_accepted=12, offers_rejected={"bad_signature": 2},
        negotiations={"agreed": 3, "price_too_low": 1}, jobs={"running": 1, "finished": 4}))
    text = generate_latest(metrics.registry).decode()
    for line in ['dgpu_peers 1.0', 'dgpu_offer_book_size 7.0', 'dgpu_offers_seen_total 12.0',
                 'dgpu_offers_rejected_total{reason="bad_signature"} 2.0',
                 'dgpu_negotiations_total{outcome="agreed",role="provider"} 3.0',
                 'dgpu_jobs{state="finished"} 4.0']:
        assert line in text, line
    state["peers"] = 5
    assert "dgpu_peers 5.0" in generate_latest(metrics.registry).decode()
