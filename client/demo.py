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
from typing import IO, TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from dgpu.node.app import NodeRuntime

__all__ = ["DEADLINE_S", "DemoNetwork", "rent_once", "run_demo"]

DEADLINE_S: Final = 60.0
#: the development ledger's clock runs this much faster: one wall second is one billed minute
LEDGER_SPEED: Final = 60
DEMO_SCRIPT: Final = (
    'echo "hello from $(uname -n): a dGPU job"\n'
    'for i in 1 2 3 4; do echo "step $i/4"; sleep 1; done\n'
    'echo "GPU (simulated): $DGPU_DEMO_GPU" >&2\n'
    "echo done\n"
)
#: a busybox image built locally (no registry is reachable); used when Docker answers
DEMO_IMAGE: Final = "dgpu-demo/busybox:1"

_PROVIDERS: Final = (
    # name, GPU, price per GPU-minute (base units, 6 decimals; None: the pricing engine's market price)
    ("provider-a", "RTX 4090:24576:1", None),
    ("provider-b", "RTX 4080:16384:1", None),
)


def _docker_image_ready() -> bool:
    """Build the demo's busybox image from the host's busybox-static when Docker answers."""
    docker, busybox = shutil.which("docker"), shutil.which("busybox")
    if docker is None or busybox is None:
        return False
    try:
        if subprocess.run([docker, "info"], capture_output=True, timeout=5, check=False).returncode != 0:
            return False
        if subprocess.run([docker, "image", "inspect", DEMO_IMAGE], capture_output=True, timeout=10,
                          check=False).returncode == 0:
            return True
        with tempfile.TemporaryDirectory() as root:
            (Path(root) / "bin").mkdir()
            shutil.copy2(busybox, Path(root) / "bin" / "busybox")
            for tool in ("sh", "echo", "sleep", "uname", "cat", "ls", "env"):
                (Path(root) / "bin" / tool).symlink_to("busybox")
            tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, timeout=30, check=True)
            subprocess.run([docker, "import", "--change", "ENV PATH=/bin", "-", DEMO_IMAGE], input=tar.stdout,
                           capture_output=True, timeout=60, check=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def _cli() -> list[str]:
    return [sys.executable, "-m", "dgpu.client.main"]


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
        self.ledger_url = ""

    def _spawn(self, name: str, args: list[str], *, stdout: int | IO[bytes] | None = None
               ) -> subprocess.Popen[Any]:
        log = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(log)
        # the demo's own network: none of the user's daemon settings (DGPU_*, the config file) apply
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("DGPU_")}, "DGPU_CONFIG": os.devnull}
        proc = subprocess.Popen(
            [*_cli(), *args, "--log-level", self.log_level], stdout=stdout or log,
            stderr=log, stdin=subprocess.DEVNULL, env=env,
        )
        self.procs[name] = proc
        return proc

    def start_bootstrap(self, deadline: float, *, ledger_speed: int = LEDGER_SPEED) -> str:
        """The bootstrap node with its HTTP services; ``self.ledger_url`` is its development ledger."""
        addr_file, url_file = self.workdir / "bootstrap.addr", self.workdir / "bootstrap.url"
        proc = self._spawn("bootstrap", ["bootstrap", "--data-dir", str(self.workdir / "bootstrap"),
                                         "--addr-file", str(addr_file), "--http-port", "0",
                                         "--http-url-file", str(url_file),
                                         "--ledger-clock-speed", str(ledger_speed)])
        self.addrs["bootstrap"] = _wait_file(addr_file, proc, deadline)
        self.ledger_url = _wait_file(url_file, proc, deadline)
        return self.addrs["bootstrap"]

    def start_provider(self, name: str, gpu: str | None, price: int | None, deadline: float | None,
                       extra: list[str] | None = None) -> str:
        """A provider of the simulated ``gpu`` (None: the GPUs NVML reports), at ``price`` (None: the
        pricing engine's market price); its address once it listens (``deadline`` None: started,
        not waited for, "")."""
        addr_file = self.workdir / f"{name}.addr"
        proc = self._spawn(name, [
            "node", "--role", "provider", "--bootstrap", self.addrs["bootstrap"],
            "--data-dir", str(self.workdir / name), "--addr-file", str(addr_file),
            *(["--simulated-gpu", gpu] if gpu is not None else []),
            *(["--price", str(price)] if price is not None else []),
            "--ledger-url", self.ledger_url,
            # ledger seconds: claim every 2 accelerated minutes; the meter follows the ledger's minute
            "--claim-interval", "120", "--billing-poll", "0.5",
            *(extra or ["--executor", "script"]),
        ])
        if deadline is None:
            return ""
        self.addrs[name] = _wait_file(addr_file, proc, deadline)
        return self.addrs[name]

    def start_renter(self, name: str, args: list[str]) -> subprocess.Popen[Any]:
        return self._spawn(name, [
            "node", "--role", "renter", "--bootstrap", self.addrs["bootstrap"],
            "--data-dir", str(self.workdir / name), "--accept-simulated", "--ledger-url", self.ledger_url, *args,
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
        print(f"  ledger     {net.ledger_url}/api/v1/ledger  (development: no real value; clock x{LEDGER_SPEED}, "
              "one wall second is one billed minute)", flush=True)
        executors = ["--executor", "script"]
        if _docker_image_ready():
            executors = ["--executor", "docker", "--executor", "script", "--allow-image", DEMO_IMAGE]
            print(f"  Docker engine found: providers run jobs in {DEMO_IMAGE} containers", flush=True)
        else:
            print("  no Docker engine: providers run jobs with the script executor (weaker isolation)", flush=True)
        for name, gpu, price in _PROVIDERS:
            addr = net.start_provider(name, gpu, price, deadline, extra=executors)
            priced = f"{price} base units/GPU-min" if price is not None else "engine-priced"
            print(f"  {name} {addr}  [{gpu}, simulated, {priced}]", flush=True)
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


async def rent_once(rt: NodeRuntime, *, script: str, min_vram_mib: int, expect_offers: int,
                    out: IO[str], ledger_url: str | None, minutes: int = 5,
                    wait_s: float = 20.0) -> dict[str, Any]:
    """Renter: fund itself from the faucet, find offers, rent the cheapest match with a real
    escrow, run ``script`` (in Docker when the provider offers it), stream its logs, and report
    what the rental cost: minutes, rate, paid, fee, refund and balances before and after."""
    from dgpu.client.client import Client
    from dgpu.client.errors import ClientError
    from dgpu.contracts.devledger.client import DevLedgerEscrow
    from dgpu.contracts.errors import ContractsError
    from dgpu.protocol.messages import Executor, LogChunk

    result: dict[str, Any] = {}
    if ledger_url is None:
        result["state"] = "no_ledger"
        return result
    ledger = DevLedgerEscrow(ledger_url, rt.key)
    client = Client(rt, ledger)
    try:
        info = await ledger.info()
        treasury = str(info["treasury"])
        await ledger.faucet(10_000_000)  # 10 development dGPU (6 decimals), worth nothing
        t0 = time.monotonic()
        offers = await client.find_offers(min_vram_mib=min_vram_mib, include_simulated=True, wait_s=wait_s)
        if offers and len(offers) < expect_offers:  # let the others arrive so "cheapest" compares them all
            offers = await client.find_offers(min_vram_mib=min_vram_mib, include_simulated=True, wait_s=3,
                                              min_results=expect_offers)
        result.update(offers_seen=len(rt.book), offers_matching=len(offers),
                      discovery_s=round(time.monotonic() - t0, 3))
        if not offers:
            result["state"] = "no_offers"
            return result
        best = offers[0]
        docker = Executor.DOCKER in best.offer.executors
        print(f"renter: {len(offers)} matching offer(s); cheapest is {best.provider[:8]}… {best.gpu_model} at "
              f"{best.price_per_minute} base units/GPU-min{' (simulated)' if best.simulated else ''}",
              file=out, flush=True)
        before = {"renter": await ledger.balance(client.wallet), "provider": await ledger.balance(best.provider),
                  "treasury": await ledger.balance(treasury)}
        job: dict[str, Any] = {"image": DEMO_IMAGE, "command": ["sh", "-c", script]} if docker \
            else {"script": script}
        t1 = time.monotonic()
        rental = await client.rent(best, max_minutes=minutes, min_vram_mib=min_vram_mib,
                                   env={"DGPU_DEMO_GPU": best.gpu_model}, **job)
        result["negotiation_ms"] = round((time.monotonic() - t1) * 1000, 1)
        terms = rental.agreement.terms
        print(f"renter: agreement {rental.id[:16]}… rate {terms.rate_per_minute}/min, deposit {terms.deposit} "
              f"locked in escrow {terms.escrow.address[:8]}… ({'docker' if docker else 'script'} executor)",
              file=out, flush=True)

        def show(chunk: LogChunk) -> None:
            for line in chunk.data.splitlines():
                print(f"  [job {chunk.stream}] {line}", file=out, flush=True)

        t2 = time.monotonic()
        outcome = await rental.run(on_log=show)
        after = {"renter": await ledger.balance(client.wallet), "provider": await ledger.balance(best.provider),
                 "treasury": await ledger.balance(treasury)}
    except (ClientError, ContractsError) as exc:
        result.update(state="failed", error=str(exc))
        return result
    finally:
        await ledger.aclose()
    result.update(provider=best.provider, gpu=best.gpu_model, executor="docker" if docker else "script",
                  state=str(outcome.state), exit_code=outcome.exit_code, log_chunks=outcome.log_chunks,
                  job_s=round(time.monotonic() - t2, 3), rate_per_minute=terms.rate_per_minute,
                  deposited=terms.deposit, minutes_billed=outcome.minutes, paid_to_provider=outcome.paid,
                  fee=outcome.fee, refunded=outcome.refunded, balances_before=before, balances_after=after,
                  conserved=outcome.paid + outcome.fee + outcome.refunded == terms.deposit,
                  offer=best.offer.model_dump(mode="json"),
                  rate_inputs=best.offer.pricing.model_dump(mode="json") if best.offer.pricing else None,
                  metered_minutes=len(outcome.receipts),
                  usage=[{"minute": r.minute_index, "gpus": [g.model_dump(mode="json") for g in r.gpus]}
                         for r in outcome.receipts[-5:]],
                  over_accrued=bool(outcome.reconciliation and outcome.reconciliation.over_accrued))
    print(f"renter: job {outcome.state} with exit code {outcome.exit_code}; billed {outcome.minutes} minute(s): "
          f"{outcome.paid} to the provider, {outcome.fee} fee, {outcome.refunded} refunded", file=out, flush=True)
    return result
