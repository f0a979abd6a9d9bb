"""Idle memory of real dGPU nodes: a bootstrap, one provider and one renter on 127.0.0.1.

Starts the three as ``dgpu`` processes (the provider with a simulated GPU, verifying escrows on
the bootstrap's development ledger), waits until the renter holds the provider's offer and a
few quiet seconds passed, then prints one JSON object: per node its RSS, the anonymous and
file-backed parts (``/proc/PID/smaps_rollup``) and its thread count. ``--baseline`` adds the
idle RSS of bare py-libp2p nodes (``bench/bare_libp2p.py``, 2 gossip nodes) for comparison.
``--breakdown`` adds what each layer of a node's imports costs: each step runs in a fresh
interpreter that imports the layers before it too, and the difference of RSS is reported; the
py-libp2p layer is what a node loads (``dgpu.node.adapters.p2p_unused`` skips the subsystems it
never runs), and ``interpreter_and_all_of_libp2p_mb`` is what all of py-libp2p's imports take.

Run it with the interpreter of the installation you want measured, from a folder where that
installation's ``dgpu`` is the one imported (``dgpu_from`` in the report says which): a
development environment holds test tools (rich, pygments, ...) that libraries import when they
find them, and an editable install may compile dGPU's modules at every start.

    .venv/bin/python bench/node_rss.py [--idle 10] [--baseline] [--breakdown]

An operator's install (runtime dependencies only), measured from outside the repository:

    python3 -m venv /tmp/rt && /tmp/rt/bin/pip install . psutil
    cd /tmp && /tmp/rt/bin/python /path/to/repo/bench/node_rss.py --baseline --breakdown
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _common import wait_file

MIB = 2**20


def _rollup(pid: int) -> dict[str, float]:
    """RSS split in MiB, from smaps_rollup (Linux)."""
    fields: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    except OSError:
        return {}
    return {"anon_mb": round(fields.get("Anonymous", 0.0), 1),
            "file_mb": round(fields.get("Rss", 0.0) - fields.get("Anonymous", 0.0), 1)}


def measure(pid: int) -> dict[str, Any]:
    p = psutil.Process(pid)
    return {"rss_mb": round(p.memory_info().rss / MIB, 1), **_rollup(pid), "threads": p.num_threads()}


class Nodes:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dgpu-rss-"))
        self.dir.chmod(0o711)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: list[str]) -> Path:
        addr = self.dir / f"{name}.addr"
        log = (self.dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "dgpu.client.main", *args, "--data-dir", str(self.dir / name),
             "--addr-file", str(addr), "--log-level", "WARNING"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        return addr

    def wait(self, name: str, path: Path) -> str:
        try:
            return wait_file(path)
        except TimeoutError:
            tail = (self.dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} did not start ({self.procs[name].poll()}):\n{tail}") from None

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


#: what a bare py-libp2p node imports
_LIBP2P = "import libp2p, libp2p.pubsub.gossipsub, libp2p.kad_dht.kad_dht, trio"

#: the layers of a renter's imports, each with the code that loads it (a step runs all before it)
IMPORT_LAYERS: list[tuple[str, str]] = [
    ("interpreter", "pass"),
    ("py-libp2p as a node loads it (QUIC, WebSocket, mDNS and AutoTLS skipped)",
     "from dgpu.node.adapters.p2p_unused import skip_unused_libp2p_subsystems\n"
     "skip_unused_libp2p_subsystems()\n" + _LIBP2P),
    ("pydantic", "import pydantic"),
    ("pydantic's schema builder (the first model)", "class _First(pydantic.BaseModel):\n    x: int"),
    ("dgpu.protocol (the wire models)", "import dgpu.protocol, dgpu.protocol.messages"),
    ("dgpu.node.config", "import dgpu.node.config"),
    ("the development ledger client", "import dgpu.contracts.devledger.client"),
    ("dgpu.node.app and the CLI", "import dgpu.node.app, dgpu.client.main"),
]

_RSS_OF_SELF = ("\nfor _line in open('/proc/self/status'):\n"
                "    if _line.startswith('VmRSS:'):\n        print(int(_line.split()[1]) / 1024)\n")


def _rss_after(code: str) -> float:
    """RSS (MiB) of a fresh interpreter that ran ``code``, median of 3."""
    return statistics.median(float(subprocess.run(
        [sys.executable, "-c", code + _RSS_OF_SELF], capture_output=True, check=True, text=True).stdout)
        for _ in range(3))


def breakdown() -> dict[str, Any]:
    """The RSS each import layer adds (MiB), and all of py-libp2p's imports for comparison."""
    steps, before, code = [], 0.0, ""
    for name, layer in IMPORT_LAYERS:
        code += layer + "\n"
        total = _rss_after(code)
        steps.append({"layer": name, "adds_mb": round(total - before, 1), "total_mb": round(total, 1)})
        before = total
    return {"layers": steps, "interpreter_and_all_of_libp2p_mb": round(_rss_after(_LIBP2P + "\n"), 1)}


def run(idle_s: float) -> dict[str, Any]:
    nodes = Nodes()
    try:
        url_file = nodes.dir / "bootstrap.url"
        boot = nodes.wait("bootstrap", nodes.spawn(
            "bootstrap", ["bootstrap", "--http-port", "0", "--http-url-file", str(url_file)]))
        ledger = wait_file(url_file)
        common = ["--bootstrap", boot, "--ledger-url", ledger]
        status = nodes.dir / "renter.status"
        nodes.wait("provider", nodes.spawn("provider", [
            "node", "--role", "provider", *common, "--simulated-gpu", "RTX 4090:24576:1",
            "--price", "100", "--accept-simulated"]))
        nodes.wait("renter", nodes.spawn("renter", [
            "node", "--role", "renter", *common, "--accept-simulated", "--status-file", str(status)]))
        end = time.monotonic() + 120
        while time.monotonic() < end:  # the renter has the provider's offer: the network formed
            try:
                if json.loads(status.read_text()).get("offers"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("the renter never saw the provider's offer")
        time.sleep(idle_s)
        return {name: measure(p.pid) for name, p in nodes.procs.items()}
    finally:
        nodes.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=float, default=10.0, help="quiet seconds before measuring")
    ap.add_argument("--baseline", action="store_true", help="also bare py-libp2p (bench/bare_libp2p.py)")
    ap.add_argument("--breakdown", action="store_true", help="also the RSS each layer of imports adds")
    args = ap.parse_args()
    out: dict[str, Any] = {"loadavg_before": os.getloadavg(), "nodes": run(args.idle)}
    if args.baseline:
        bare = subprocess.run([sys.executable, str(Path(__file__).with_name("bare_libp2p.py")),
                               "--sizes", "2", "--publishes", "1", "--rounds", "1"],
                              capture_output=True, check=True, text=True)
        out["bare_libp2p_idle_rss"] = json.loads(bare.stdout)["gossip"]["2"]["idle_rss"]
    if args.breakdown:
        out["import_breakdown"] = breakdown()
    out["python"] = sys.executable
    out["dgpu_from"] = subprocess.run([sys.executable, "-c", "import dgpu; print(dgpu.__file__)"],
                                      capture_output=True, check=True, text=True).stdout.strip()
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
