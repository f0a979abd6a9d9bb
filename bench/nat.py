"""Rentals direct, relayed and hole-punched, on network namespaces (``dgpu.node.adapters.netns``).

For each path a fresh network: a bootstrap node (relay, dial-back, development ledger) on the
public segment and one provider, then ``--runs`` paid rentals by ``python -m dgpu.client.nat_demo``, each
measuring the negotiation round trip (request, quote, escrow funding, accept, agreement), the
first log line's latency after submitting the job, and the result download's throughput:

- ``direct``: provider and renter on the public segment;
- ``relay``: provider behind NAT, renter public but listening on loopback only, so DCUtR cannot
  turn the relayed connection direct;
- ``hole-punched``: provider and renter behind two different NATs, DCUtR upgrades the circuit.

Needs root (namespaces). Prints one JSON object: per path, the medians and every run.
Usage: sudo .venv/bin/python bench/nat.py [--runs 3] [--result-mib 16]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from dgpu.client.nat_demo import NatProcs
from dgpu.node.adapters.netns import NatLab, nat_lab, unavailable


def bench_path(lab: NatLab, path: str, runs: int, result_bytes: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-bench-nat-"))
    workdir.chmod(0o711)  # a root provider runs script jobs as nobody below it
    procs = NatProcs(lab, workdir)
    try:
        boot, ledger = procs.bootstrap()
        home = lab.homes[0]
        procs.provider(*((lab.public_ns, lab.public_ip) if path == "direct" else (home.ns, home.ip)), boot, ledger)
        renter_ns, renter_ip = (lab.homes[1].ns, lab.homes[1].ip) if path == "hole-punched" else (
            lab.public_ns, "127.0.0.1")
        reports = []
        for _ in range(runs):
            report = procs.rent(renter_ns, boot, ledger, "--listen-host", renter_ip,
                                "--result-bytes", str(result_bytes), "--tick", "0.2")
            reports.append({k: report.get(k) for k in (
                "state", "path", "path_after", "negotiation_s", "first_log_s", "download_s",
                "download_mib_s", "error", "stderr")})
        ok = [r for r in reports if r["state"] == "finished"]

        def median(key: str) -> float | None:
            values = [r[key] for r in ok if r.get(key) is not None]
            return round(statistics.median(values), 4) if values else None

        return {"paths_seen": sorted({str(r["path"]) for r in reports}), "finished": len(ok), "runs": runs,
                "negotiation_s": median("negotiation_s"), "first_log_s": median("first_log_s"),
                "download_mib_s": median("download_mib_s"), "result_mib": result_bytes / 2**20,
                "each": reports}
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--result-mib", type=float, default=16)
    ap.add_argument("--paths", default="direct,relay,hole-punched")
    args = ap.parse_args()
    reason = unavailable()
    if reason is not None:
        print(json.dumps({"error": f"cannot build network namespaces: {reason}"}))
        return 2
    out: dict[str, Any] = {}
    with nat_lab(homes=2) as lab:
        for path in args.paths.split(","):
            out[path] = bench_path(lab, path, args.runs, int(args.result_mib * 2**20))
    print(json.dumps(out, indent=2))
    return 0 if all(v["finished"] == v["runs"] for v in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
