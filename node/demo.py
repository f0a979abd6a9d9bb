"""``dgpu demo``: a local network on 127.0.0.1 as separate OS processes, start to clean finish.

1 bootstrap node, 2 providers (explicit *simulated* GPU inventories, marked so in their offers)
and 1 renter. Each child binds port 0 and reports its real multiaddr through a file (written
atomically), so no two processes ever race for a port (listeners use SO_REUSEPORT, so a
"free port" picked in advance could be bound twice without an error). The renter finds the
offers, picks the cheapest match, negotiates, runs a small job and streams its log here. Then
every child gets SIGTERM (each closes its host and stops its threads) and anything still alive
after a grace period is killed; the whole run is bounded by ``DEADLINE_S``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Final

import trio

__all__ = ["DEADLINE_S", "DemoNetwork", "rent_once", "run_demo"]

DEADLINE_S: Final = 60.0
DEMO_SCRIPT: Final = (
    'echo "hello from $(uname -n): a dGPU job"\n'
    'for i in 1 2 3; do echo "step $i/3"; sleep 0.3; done\n'
    'echo "GPU (simulated): $DGPU_DEMO_GPU" >&2\n'
    "echo done\n"
)

_PROVIDERS: Final = (
    # name, GPU, price per GPU-minute (base units, 6 decimals)
    ("provider-a", "RTX 4090:24576:1", 8_334),
    ("provider-b", "RTX 4080:16384:1", 6_667),
)


def _cli() -> list[str]:
    return [sys.executable, "-m", "dgpu.node.cli"]


def _wait_file(path: Path, proc: subprocess.Popen[Any], deadline: float) -> str:
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"{path.stem} exited with {proc.returncode} before it listened")
        time.sleep(0.05)
    raise TimeoutError(f"{path.stem} did not report its address in time")


class DemoNetwork:
    """Starts and stops the child processes (a supervisor: it owns every child it starts)."""

    def __init__(self, workdir: Path, *, log_level: str = "WARNING") -> None:
        self.workdir = workdir
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self._logs: list[IO[bytes]] = []
        self.addrs: dict[str, str] = {}

    def _spawn(self, name: str, args: list[str], *, stdout: int | IO[bytes] | None = None
               ) -> subprocess.Popen[Any]:
        log = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(log)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DGPU_KEY")}
        proc = subprocess.Popen(
            [*_cli(), *args, "--log-level", self.log_level], stdout=stdout or log,
            stderr=log, stdin=subprocess.DEVNULL, env=env,
        )
        self.procs[name] = proc
        return proc

    def start_bootstrap(self, deadline: float) -> str:
        addr_file = self.workdir / "bootstrap.addr"
        proc = self._spawn("bootstrap", ["bootstrap", "--data-dir", str(self.workdir / "bootstrap"),
                                         "--addr-file", str(addr_file)])
        self.addrs["bootstrap"] = _wait_file(addr_file, proc, deadline)
        return self.addrs["bootstrap"]

    def start_provider(self, name: str, gpu: str, price: int, deadline: float,
                       extra: list[str] | None = None) -> str:
        addr_file = self.workdir / f"{name}.addr"
        proc = self._spawn(name, [
            "node", "--role", "provider", "--bootstrap", self.addrs["bootstrap"],
            "--data-dir", str(self.workdir / name), "--addr-file", str(addr_file),
            "--simulated-gpu", gpu, "--price", str(price), "--allow-unfunded-escrow",
            *(extra or []),
        ])
        self.addrs[name] = _wait_file(addr_file, proc, deadline)
        return self.addrs[name]

    def start_renter(self, name: str, args: list[str]) -> subprocess.Popen[Any]:
        return self._spawn(name, [
            "node", "--role", "renter", "--bootstrap", self.addrs["bootstrap"],
            "--data-dir", str(self.workdir / name), "--accept-simulated", *args,
        ], stdout=subprocess.PIPE)

    def stop(self, grace_s: float = 10.0) -> dict[str, int | None]:
        """SIGTERM all, wait up to ``grace_s``, SIGKILL the rest; returns exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace_s
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, end - time.monotonic()))
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                codes[name] = None  # had to be killed
            else:
                codes[name] = proc.returncode
        for f in self._logs:
            f.close()
        return codes


def run_demo(*, keep: bool = False, log_level: str = "WARNING") -> int:
    """The README's main command. Returns the process exit status."""
    start = time.monotonic()
    deadline = start + DEADLINE_S
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-demo-"))
    # traversable (not listable): a root provider runs script jobs as nobody under it
    workdir.chmod(0o711)
    net = DemoNetwork(workdir, log_level=log_level)
    # the whole demo is bounded: past the deadline every child is killed
    def kill_all() -> None:
        for p in net.procs.values():
            if p.poll() is None:
                p.kill()

    timer = threading.Timer(DEADLINE_S, kill_all)
    timer.start()
    summary: dict[str, Any] = {}
    ok = False
    try:
        print(f"dGPU demo: local network on 127.0.0.1 (work dir {workdir})", flush=True)
        boot = net.start_bootstrap(deadline)
        print(f"  bootstrap  {boot}", flush=True)
        for name, gpu, price in _PROVIDERS:
            addr = net.start_provider(name, gpu, price, deadline)
            print(f"  {name} {addr}  [{gpu}, simulated, {price} base units/GPU-min]", flush=True)
        renter = net.start_renter("renter", ["--rent-script", DEMO_SCRIPT,
                                             "--rent-min-vram", "16000",
                                             "--rent-expect-offers", str(len(_PROVIDERS))])
        assert renter.stdout is not None
        for raw in renter.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if line.startswith("SUMMARY "):
                summary = json.loads(line[len("SUMMARY "):])
            else:
                print(line, flush=True)
        renter.wait()
        ok = renter.returncode == 0 and summary.get("state") == "finished"
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"demo failed: {exc}", flush=True)
    finally:
        codes = net.stop()
        timer.cancel()
        elapsed = time.monotonic() - start
        summary["processes"] = codes
        summary["elapsed_s"] = round(elapsed, 2)
        print("summary: " + json.dumps(summary, indent=2), flush=True)
        killed = [n for n, c in codes.items() if c is None]
        if killed:
            ok = False
            print(f"processes that had to be killed: {killed}", flush=True)
        if not ok:
            print(f"logs kept in {workdir}", flush=True)
        elif not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


async def rent_once(rt: Any, *, script: str, min_vram_mib: int, expect_offers: int,
                    out: IO[str], wait_s: float = 20.0) -> dict[str, Any]:
    """Renter: find offers, pick the cheapest match, negotiate, run ``script``, stream logs."""
    from dgpu.node.app import new_nonce, wall_clock
    from dgpu.node.errors import JobLostError, NetworkError, RejectedError
    from dgpu.node.services.job_stream import run_job
    from dgpu.node.services.negotiation import UnfundedPlaceholderEscrow, negotiate
    from dgpu.node.services.offers import OfferQuery
    from dgpu.protocol.messages import Executor, LogChunk

    query = OfferQuery(min_vram_mib=min_vram_mib, executor=Executor.SCRIPT,
                       include_simulated=True)
    t0 = time.monotonic()
    with trio.move_on_after(wait_s):
        await rt.book.wait_for(query, now=wall_clock, count=1)
        # give the other offers a moment to arrive, so "cheapest" compares them all
        with trio.move_on_after(3):
            await rt.book.wait_for(query, now=wall_clock, count=expect_offers)
    hits = rt.book.query(query, now=wall_clock())
    result: dict[str, Any] = {"offers_seen": len(rt.book), "offers_matching": len(hits),
                              "discovery_s": round(time.monotonic() - t0, 3)}
    if not hits:
        result["state"] = "no_offers"
        return result
    best = hits[0]
    offer = best.offer
    print(f"renter: {len(hits)} matching offer(s); cheapest is {offer.provider[:8]}… "
          f"{offer.gpus[0].model} at {offer.price_per_minute} base units/GPU-min"
          f"{' (simulated)' if offer.simulated else ''}", file=out, flush=True)
    job = {"executor": Executor.SCRIPT, "script": script, "max_minutes": 5,
           "gpu_count": 1, "min_vram_mib": min_vram_mib,
           "max_price_per_minute": offer.price_per_minute,
           "env": {"DGPU_DEMO_GPU": offer.gpus[0].model}}
    t1 = time.monotonic()
    try:
        neg = await negotiate(rt.node, rt.key, offer, job, escrow=UnfundedPlaceholderEscrow(),
                              clock=wall_clock, nonce=new_nonce, provider_peer=best.peer_id)
    except (RejectedError, NetworkError) as exc:
        result["state"] = "negotiation_failed"
        result["error"] = str(exc)
        return result
    result["negotiation_ms"] = round((time.monotonic() - t1) * 1000, 1)
    terms = neg.agreement.terms
    print(f"renter: agreement {neg.agreement.agreement_id[:16]}… rate {terms.rate_per_minute}"
          f"/min, deposit {terms.deposit} (escrow: {terms.escrow.ledger}, NOT FUNDED)",
          file=out, flush=True)

    def show(chunk: LogChunk) -> None:
        for line in chunk.data.splitlines():
            print(f"  [job {chunk.stream}] {line}", file=out, flush=True)

    t2 = time.monotonic()
    try:
        outcome = await run_job(rt.node, rt.key, neg.agreement, neg.provider_peer,
                                clock=wall_clock, nonce=new_nonce, on_log=show)
    except (JobLostError, RejectedError, NetworkError) as exc:
        result["state"] = "job_lost"
        result["error"] = str(exc)
        return result
    result.update(provider=offer.provider, gpu=offer.gpus[0].model,
                  price_per_gpu_minute=offer.price_per_minute, state=str(outcome.state),
                  exit_code=outcome.exit_code, log_chunks=outcome.log_chunks,
                  job_s=round(time.monotonic() - t2, 3))
    print(f"renter: job {outcome.state} with exit code {outcome.exit_code}", file=out, flush=True)
    return result
