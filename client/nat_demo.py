"""The demo with a provider behind NAT, and the measured rental that bench/nat.py and the NAT
tests run.

:func:`run_demo` (``dgpu demo --provider-behind-nat``, wired by the CLI) builds a NAT lab
(``dgpu.node.adapters.netns``: a public segment and a home behind a router that drops every
connection from outside), starts a bootstrap node (relay, dial-back, development ledger) on the
public segment and a provider in the home, and runs one measured rental from the public segment.

The measured rental (``python -m dgpu.client.nat_demo --bootstrap MULTIADDR --ledger-url URL``)
runs a renter node joined through ``--bootstrap``, funds it from the development ledger's
faucet, rents the cheapest offer for a script that logs a few lines and leaves a
``--result-bytes`` output file, follows the logs, downloads the result, and prints one JSON
object: the job's outcome and escrow, the path the rental used (``direct``, ``relay``,
``hole-punched``), and timings (negotiation, first log, download throughput).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import trio

from dgpu.client import Client
from dgpu.client.errors import ClientError
from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.node.adapters.netns import NatLab, nat_lab, unavailable
from dgpu.node.app import NodeRuntime, run_node
from dgpu.node.config import NodeConfig
from dgpu.protocol.messages import LogChunk

SCRIPT = """echo started
mkdir -p "$HOME/outputs"
head -c {n} /dev/urandom > "$HOME/outputs/blob.bin"
sha256sum "$HOME/outputs/blob.bin" | cut -d' ' -f1
for i in 1 2 3; do echo "tick $i"; sleep {tick}; done
echo done
"""


async def rent(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dgpu-nat-renter-") as tmp:
        # a renter node of our own (Client.connect listens on 127.0.0.1 only: a hole punch needs
        # an address the other side can reach)
        config = NodeConfig(role="renter", bootstrap=tuple(args.bootstrap), data_dir=Path(tmp),
                            accept_simulated=True, listen_host=args.listen_host)
        async with trio.open_nursery() as nursery:
            runtime: NodeRuntime = await nursery.start(run_node, config)
            ledger = DevLedgerEscrow(args.ledger_url, runtime.key)
            try:
                await ledger.faucet(1_000_000)
                await _rent(Client(runtime, ledger), args, Path(tmp), out)
            finally:
                await ledger.aclose()
                nursery.cancel_scope.cancel()
    return out


async def _rent(client: Client, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    offers = await client.find_offers(wait_s=args.wait)
    out["offers"] = len(offers)
    if not offers:
        out["state"] = "no_offers"
        return
    offer = offers[0]
    out["offer_addrs"] = list(offer.offer.addrs)
    node = client.runtime.node
    t0 = time.perf_counter()
    rental = await client.rent(offer, script=SCRIPT.format(n=args.result_bytes, tick=args.tick),
                               max_minutes=5)
    out["negotiation_s"] = round(time.perf_counter() - t0, 4)
    out["path"] = node.path_to(rental.provider_peer)
    logs: list[str] = []
    first: list[float] = []
    t_run = time.perf_counter()

    def on_log(chunk: LogChunk) -> None:
        if not first:
            first.append(time.perf_counter() - t_run)
        logs.append(chunk.data)

    try:
        result = await rental.run(on_log=on_log)
    except ClientError as exc:
        out.update(state="failed", error=str(exc), logs="".join(logs))
        escrow = await rental.escrow_state()
        out["escrow"] = _escrow(escrow)
        return
    out.update(state=str(result.state), exit_code=result.exit_code, logs="".join(logs),
               first_log_s=round(first[0], 4) if first else None, paid=result.paid,
               minutes=result.minutes, refunded=result.refunded)
    if result.escrow is not None:
        out["escrow"] = _escrow(result.escrow)
    dest = tmp / "result"
    t_dl = time.perf_counter()
    files = await rental.download_result(dest)
    dl_s = time.perf_counter() - t_dl
    blob = dest / "blob.bin"
    size = blob.stat().st_size if blob.exists() else 0
    out.update(download_bytes=size, download_s=round(dl_s, 4),
               download_mib_s=round(size / dl_s / 2**20, 3) if dl_s > 0 else None,
               result_files=sorted(str(f.relative_to(dest)) for f in files),
               result_sha256=hashlib.sha256(blob.read_bytes()).hexdigest() if size else None,
               path_after=node.path_to(rental.provider_peer))


def _escrow(view: Any) -> dict[str, Any]:
    return {"status": str(view.status), "deposited": view.deposited, "paid": view.paid,
            "fee": view.fee_paid, "refunded": view.refunded, "minutes": view.claimed_minutes,
            "rate": view.rate_per_minute}


def main() -> int:
    ap = argparse.ArgumentParser(description="one measured paid rental (see dgpu.client.nat_demo)")
    ap.add_argument("--bootstrap", action="append", required=True)
    ap.add_argument("--ledger-url", required=True)
    ap.add_argument("--result-bytes", type=int, default=1 << 20)
    ap.add_argument("--tick", type=float, default=0.5, help="seconds between the job's log lines")
    ap.add_argument("--listen-host", default="127.0.0.1", help="the renter node's listen address")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for an offer")
    args = ap.parse_args()
    result = trio.run(rent, args)
    print(json.dumps(result), flush=True)
    return 0 if result.get("state") == "finished" else 1


class NatProcs:
    """dGPU processes inside a lab's namespaces; :meth:`stop` ends them (SIGTERM, then kill)."""

    def __init__(self, lab: NatLab, workdir: Path, log_level: str = "WARNING") -> None:
        self.lab, self.workdir, self.log_level = lab, workdir, log_level
        self.popens: list[subprocess.Popen[bytes]] = []

    def start(self, ns: str, name: str, args: list[str], wait_for: Path | None = None) -> str:
        """``dgpu <args>`` in ``ns``; its multiaddr once it wrote it (and ``wait_for`` exists)."""
        log = (self.workdir / f"{name}.log").open("wb")
        cmd = [sys.executable, "-m", "dgpu.client.main", *args, "--data-dir", str(self.workdir / name),
               "--addr-file", str(self.workdir / f"{name}.addr"), "--log-level", self.log_level]
        self.popens.append(subprocess.Popen(self.lab.cmd(ns, cmd), stdout=log, stderr=log))
        log.close()
        addr = self.workdir / f"{name}.addr"
        deadline = time.monotonic() + 60
        while not addr.exists() or (wait_for is not None and not wait_for.exists()):
            if time.monotonic() > deadline or self.popens[-1].poll() is not None:
                raise RuntimeError(f"{name} did not start: {(self.workdir / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.05)
        return addr.read_text().strip()

    def bootstrap(self) -> tuple[str, str]:
        """A bootstrap node on the public segment (ledger clock x60); (multiaddr, ledger URL)."""
        url, ip = self.workdir / "bootstrap.url", self.lab.public_ip
        addr = self.start(self.lab.public_ns, "bootstrap", [
            "bootstrap", "--host", ip, "--http-host", ip, "--http-port", "0", "--ledger-clock-speed", "60",
            "--http-url-file", str(url)], wait_for=url)
        return addr, url.read_text().strip()

    def provider(self, ns: str, ip: str, bootstrap: str, ledger_url: str) -> str:
        return self.start(ns, "provider", ["node", "--role", "provider", "--bootstrap", bootstrap, "--host", ip,
                                           "--ledger-url", ledger_url, *DEMO_PROVIDER_FLAGS])

    def rent(self, ns: str, bootstrap: str, ledger_url: str, *args: str) -> dict[str, Any]:
        """One measured rental by a renter process in ``ns``; its report."""
        done = subprocess.run(self.lab.cmd(ns, [
            sys.executable, "-m", "dgpu.client.nat_demo", "--bootstrap", bootstrap, "--ledger-url", ledger_url,
            *args]), capture_output=True, text=True, timeout=300, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        report: dict[str, Any] = json.loads(lines[-1]) if lines else {
            "state": "no_report", "stderr": done.stderr[-1500:]}
        return report

    def stop(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.popens:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


#: a simulated GPU, script jobs, a metered minute per wall second (the ledger runs x60)
DEMO_PROVIDER_FLAGS = ["--executor", "script", "--meter-interval", "1", "--billing-poll", "0.3",
                       "--start-window", "30", "--simulated-gpu", "RTX 4090:24576:1", "--price", "100"]


def run_demo(out: IO[str] = sys.stdout, *, log_level: str = "WARNING", keep: bool = False) -> int:
    """The demo with its provider behind NAT; 0 when a paid rental finished (summary on ``out``).

    Non-zero, with the reason, where namespaces cannot be built (not root, no ``ip``)."""
    reason = unavailable()
    if reason is not None:
        print(f"dgpu demo --provider-behind-nat: cannot build network namespaces: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-nat-demo-"))
    workdir.chmod(0o711)  # a root provider runs script jobs as nobody below it
    try:
        with nat_lab(homes=1) as lab:
            procs = NatProcs(lab, workdir, log_level)
            try:
                boot, ledger = procs.bootstrap()
                home = lab.homes[0]
                procs.provider(home.ns, home.ip, boot, ledger)
                print(f"provider in {home.ns} ({home.ip}, behind NAT {home.wan_ip}); bootstrap and renter "
                      f"on {lab.public_ns} ({lab.public_ip})", file=out, flush=True)
                report = procs.rent(lab.public_ns, boot, ledger)
            finally:
                procs.stop()
    finally:
        if keep:
            print(f"work dir kept: {workdir}", file=out)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {k: report.get(k) for k in ("state", "path", "negotiation_s", "first_log_s", "download_mib_s",
                                          "escrow", "offer_addrs", "error", "stderr") if k in report}
    print(json.dumps(summary, indent=2), file=out, flush=True)
    paid = (report.get("escrow") or {}).get("paid", 0)
    return 0 if report.get("state") == "finished" and paid > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
