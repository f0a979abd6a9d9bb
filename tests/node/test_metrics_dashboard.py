"""The Grafana dashboard queries only metrics the node really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from dgpu.node.metrics import NodeMetrics

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
