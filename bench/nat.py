"""Rentals direct, relayed and hole-punched, on network namespaces (``dgpu.node.adapters.netns``).

For each path a fresh network: a bootstrap node (relay, dial-back, development ledger) on the
public segment and one provider, then ``--runs`` paid rentals by ``bench/nat_renter.py``, each
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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dgpu.node.adapters.netns import NatLab, nat_lab, unavailable

RENTER = Path(__file__).resolve().parent / "nat_renter.py"
PROVIDER_FLAGS = ["--executor", "script", "--meter-interval", "1", "--billing-poll", "0.3",
                  "--start-window", "30", "--simulated-gpu", "RTX 4090:24576:1", "--price", "100"]


class Procs:
    def __init__(self, lab: NatLab, workdir: Path) -> None:
        self.lab, self.workdir = lab, workdir
        self.popens: list[subprocess.Popen[bytes]] = []

    def start(self, ns: str, name: str, args: list[str], wait_for: Path | None = None) -> str:
        """``dgpu <args>`` in ``ns``; its multiaddr once it wrote it (and ``wait_for`` exists)."""
        log = (self.workdir / f"{name}.log").open("wb")
        cmd = [sys.executable, "-m", "dgpu.node.cli", *args, "--data-dir", str(self.workdir / name),
               "--addr-file", str(self.workdir / f"{name}.addr"), "--log-level", "WARNING"]
        self.popens.append(subprocess.Popen(self.lab.cmd(ns, cmd), stdout=log, stderr=log))
        addr = self.workdir / f"{name}.addr"
        deadline = time.monotonic() + 60
        while not addr.exists() or (wait_for is not None and not wait_for.exists()):
            if time.monotonic() > deadline or self.popens[-1].poll() is not None:
                raise RuntimeError(f"{name} did not start: {(self.workdir / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.05)
        return addr.read_text().strip()

    def stop(self) -> None:
        for p in self.popens:
            p.send_signal(signal.SIGTERM)
        for p in self.popens:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def bench_path(lab: NatLab, path: str, runs: int, result_bytes: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-bench-nat-"))
    workdir.chmod(0o711)  # a root provider runs script jobs as nobody below it
    procs = Procs(lab, workdir)
    try:
        pub, ip = lab.public_ns, lab.public_ip
        url = workdir / "bootstrap.url"
        boot = procs.start(pub, "bootstrap", ["bootstrap", "--host", ip, "--http-host", ip, "--http-port", "0",
                                              "--ledger-clock-speed", "60", "--http-url-file", str(url)],
                           wait_for=url)
        ledger = url.read_text().strip()
        provider_ns, provider_ip = (pub, ip) if path == "direct" else (lab.homes[0].ns, lab.homes[0].ip)
        procs.start(provider_ns, "provider", ["node", "--role", "provider", "--bootstrap", boot, "--host",
                                              provider_ip, "--ledger-url", ledger, *PROVIDER_FLAGS])
        renter_ns, renter_ip = (lab.homes[1].ns, lab.homes[1].ip) if path == "hole-punched" else (pub, "127.0.0.1")
        reports = []
        for _ in range(runs):
            done = subprocess.run(lab.cmd(renter_ns, [
                sys.executable, str(RENTER), "--bootstrap", boot, "--ledger-url", ledger,
                "--listen-host", renter_ip, "--result-bytes", str(result_bytes), "--tick", "0.2"]),
                capture_output=True, text=True, timeout=300, check=False)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            report = json.loads(lines[-1]) if lines else {"state": "no_report", "stderr": done.stderr[-1500:]}
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
