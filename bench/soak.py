"""Soak: a network of node processes kept busy for a while, one node restarted again and again.

Starts a bootstrap and ``--nodes`` providers as in ``bench/network.py`` (with the default offer
lifetime: each also republishes every 100 s), then every minute, for
``--minutes``: triggers ``--publishes`` offer publications (SIGUSR1), restarts node ``n0``
(SIGTERM, then the same key and folder on a new port: its neighbours must drop the old
connection and take the new one), and samples every process. Prints one JSON object: per
minute, the long-lived nodes' RSS (median, max), open file descriptors and threads (max), the
fewest offers any of them holds and the fewest peers any is connected to, and the bootstrap's
RSS and descriptors; then the RSS slope (least squares over the minutes after ``--warmup``) of
the nodes' median and of the bootstrap, in MB per hour. A leak shows as a slope that stays
positive; bounded state levels off once it is full (the replay cache after an offer lifetime,
py-libp2p's equivocation record after 1,000 messages, the accepted-offer history after 4,096).

    .venv/bin/python bench/soak.py [--nodes 10] [--minutes 15] [--publishes 30] [--no-churn]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import psutil
from _common import trigger_publications
from network import DEFAULT_OFFER_TTL_S, Swarm

MIB = 2**20


def _proc(pid: int) -> dict[str, float] | None:
    try:
        p = psutil.Process(pid)
        return {"rss_mb": p.memory_info().rss / MIB, "fds": p.num_fds(), "threads": p.num_threads()}
    except psutil.Error:
        return None


def sample(sw: Swarm, minute: int) -> dict[str, Any]:
    """The long-lived nodes (all but n0) and the bootstrap, now."""
    nodes = [s for s in (_proc(p.pid) for p in sw.procs[2:]) if s is not None]
    boot = _proc(sw.procs[0].pid) or {"rss_mb": 0.0, "fds": 0, "threads": 0}
    statuses = sw.statuses()[1:]
    publishers = sw.publishers()
    return {
        "minute": minute,
        "alive": len(nodes),
        "rss_median_mb": round(statistics.median(n["rss_mb"] for n in nodes), 1),
        "rss_max_mb": round(max(n["rss_mb"] for n in nodes), 1),
        "fds_max": max(int(n["fds"]) for n in nodes),
        "threads_max": max(int(n["threads"]) for n in nodes),
        "offers_min": min(len(publishers & set(s.get("offers", {}))) for s in statuses),
        "publishers": len(publishers),
        "connected_min": min(int(s.get("connected", 0)) for s in statuses),
        "boot_rss_mb": round(boot["rss_mb"], 1),
        "boot_fds": int(boot["fds"]),
    }


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minute, MB) points, in MB per hour."""
    if len(points) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return round(60 * sum((x - mx) * (y - my) for x, y in points) / den, 2) if den else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--minutes", type=int, default=15)
    ap.add_argument("--publishes", type=int, default=30, help="offer publications per minute (all nodes)")
    ap.add_argument("--warmup", type=int, default=3, help="minutes left out of the slopes")
    ap.add_argument("--no-churn", action="store_true", help="do not restart n0 every minute")
    ap.add_argument("--offer-ttl", type=int, default=DEFAULT_OFFER_TTL_S,
                    help="the nodes' offer lifetime (they republish at a third of it)")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' folder (logs, status files)")
    args = ap.parse_args()
    if args.nodes < 3:
        ap.error("--nodes must be at least 3 (n0 restarts; the others are measured)")
    sw = Swarm(args.nodes, keep=args.keep, offer_ttl_s=args.offer_ttl)
    out: dict[str, Any] = {"cpus": psutil.cpu_count(), "loadavg_before": os.getloadavg(), "nodes": args.nodes,
                           "churn": not args.no_churn, "offer_ttl_s": args.offer_ttl,
                           "publishes_per_minute": args.publishes, "samples": []}
    try:
        sw.start()
        out["settle_s"] = round(sw.settle(timeout=90 + 2 * args.nodes), 1)
        gap_s = 30.0 / max(1, args.publishes)  # the publications take half of each minute
        restarts = 0
        for minute in range(1, args.minutes + 1):
            t0 = time.monotonic()
            trigger_publications(sw.procs[2:], args.publishes, gap_s)
            if not args.no_churn:
                sw.restart(0)
                restarts += 1
            time.sleep(max(0.0, 60 - (time.monotonic() - t0)))
            point = sample(sw, minute)
            out["samples"].append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)  # progress
        out["restarts"] = restarts
        late = [s for s in out["samples"] if s["minute"] > args.warmup]
        out["rss_slope_mb_per_hour"] = slope_per_hour([(s["minute"], s["rss_median_mb"]) for s in late])
        out["boot_rss_slope_mb_per_hour"] = slope_per_hour([(s["minute"], s["boot_rss_mb"]) for s in late])
        out["fds_max_first_last"] = [out["samples"][0]["fds_max"], out["samples"][-1]["fds_max"]]
    finally:
        codes, stop_s = sw.stop()
        out["stop_s"] = round(stop_s, 1)
        out["unclean_exits"] = sum(1 for c in codes if c != 0)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
