"""Detach, re-attach and hung providers end to end: a bootstrap node (development ledger, clock
x60: one wall second is one ledger minute) and provider processes on 127.0.0.1; renters are
``dgpu.client`` nodes, in a child process (the one killed mid-job) and in the test process.

- a renter killed mid-job: the job runs on, is billed for what ran only; the renter's node,
  restarted on the same data dir, re-attaches and gets the rest of the logs and the result;
- ``stop_on_disconnect``: the old behaviour, the job is stopped and the escrow closed;
- a renter that gave an upload link gets the result pushed to its bootstrap bucket, readable
  there while its node is stopped;
- a provider frozen with SIGSTOP: the renter notices within the silence bound (heartbeats).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import trio

from dgpu.client import Client, JobFailed
from dgpu.client.demo import DemoNetwork
from dgpu.node.adapters.bootstrap_client import BootstrapSession
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.errors import ProviderSilentError
from dgpu.node.services.billing import BillingPolicy
from dgpu.node.services.blobs import safe_unpack
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.job_frames import SILENCE_BOUND_S
from dgpu.protocol.messages import JobState, LogChunk

pytestmark = pytest.mark.integration

PROVIDER_FLAGS = ["--executor", "script", "--claim-interval", "120", "--billing-grace", "60",
                  "--billing-poll", "0.3", "--meter-interval", "1", "--start-window", "3"]
PRICE = 1_000

#: the renter that gets killed: rents, prints the agreement and the log lines, follows the job
CHILD = """
import sys, trio
from pathlib import Path
from dgpu.client import Client
from dgpu.node.services.billing import BillingPolicy

async def main(bootstrap, ledger_url, data_dir, script, stop, upload):
    async with Client.connect([bootstrap], ledger_url=ledger_url, data_dir=Path(data_dir), accept_simulated=True,
                              billing_policy=BillingPolicy(poll_interval_s=0.3)) as client:
        await client.ledger.faucet(1_000_000)
        assert await client.find_offers(gpu_model="RTX 4090", wait_s=30)
        rental = await client.rent(script=script, max_minutes=60, gpu_model="RTX 4090", stop_on_disconnect=stop,
                                   result_upload=upload)
        print("AGREEMENT", rental.id, rental.escrow.address, flush=True)
        await rental.run(on_log=lambda c: print("LOG", c.data.strip(), flush=True))

trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]).read_text(), sys.argv[5] == "stop",
         sys.argv[6] if len(sys.argv) > 6 else None)
"""


@pytest.fixture(scope="module")
def network() -> Iterator[DemoNetwork]:
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-detach-"))
    workdir.chmod(0o711)  # script jobs run as nobody under the providers' folders
    net = DemoNetwork(workdir, log_level="INFO")
    deadline = time.monotonic() + 60
    try:
        net.start_bootstrap(deadline, ledger_speed=60)
        net.start_provider("provider", "RTX 4090:24576:1", PRICE, deadline, extra=PROVIDER_FLAGS)
        net.start_provider("frozen", "RTX 3090:24576:1", PRICE, deadline, extra=PROVIDER_FLAGS)
        yield net
    finally:
        for proc in net.procs.values():  # a frozen process cannot take SIGTERM
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        net.stop()
        remove_tree(workdir)


@asynccontextmanager
async def renter(net: DemoNetwork, data_dir: Path, gpu_model: str, *, faucet: bool = True) -> AsyncIterator[Client]:
    async with Client.connect([net.addrs["bootstrap"]], ledger_url=net.ledger_url, data_dir=data_dir,
                              accept_simulated=True, billing_policy=BillingPolicy(poll_interval_s=0.3)) as client:
        assert client.ledger is not None
        if faucet:  # once per wallet and hour
            await client.ledger.faucet(1_000_000)  # type: ignore[attr-defined]
        assert await client.find_offers(gpu_model=gpu_model, wait_s=30), "the provider's offer never arrived"
        yield client


def script(seconds: int) -> str:
    return (f'echo started\nfor i in $(seq 1 {seconds}); do sleep 1; echo "tick $i"; done\n'
            f'mkdir -p "$HOME/outputs"; echo "all {seconds} ticks" > "$HOME/outputs/summary.txt"\necho done\n')


class ChildRenter:
    """The renter's node in its own OS process (so it can be killed)."""

    def __init__(self, net: DemoNetwork, data_dir: Path, job: str, *, stop: bool, upload: str | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "job.sh").write_text(job)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, net.addrs["bootstrap"], net.ledger_url, str(data_dir),
             str(data_dir / "job.sh"), "stop" if stop else "run", *([upload] if upload else [])],
            stdout=subprocess.PIPE, stderr=(data_dir / "child.log").open("wb"), text=True)
        assert self.proc.stdout is not None
        self.out: IO[str] = self.proc.stdout
        self.agreement = self.escrow = ""
        self.lines: list[str] = []

    async def until(self, text: str) -> None:
        """Read the child's output until a log line holds ``text`` (the agreement comes first)."""
        while True:
            line = await trio.to_thread.run_sync(self.out.readline)
            assert line, f"the renter exited before {text!r} (code {self.proc.poll()})"
            kind, _, rest = line.strip().partition(" ")
            if kind == "AGREEMENT":
                self.agreement, self.escrow = rest.split()
            elif kind == "LOG":
                self.lines.append(rest)
                if text in rest:
                    return

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


async def test_a_killed_renter_re_attaches_and_gets_the_rest_of_the_logs_and_the_result(
        network: DemoNetwork, tmp_path: Path) -> None:
    data_dir = tmp_path / "renter"
    child = ChildRenter(network, data_dir, script(25), stop=False)
    try:
        with trio.fail_after(90):
            await child.until("tick 2")
    finally:
        child.kill()  # the renter's node goes away mid-job
    killed_at = time.monotonic()
    async with renter(network, data_dir, "RTX 4090", faucet=False) as client:  # the same node, restarted
        [kept] = await client.detached_rentals()  # its rental was kept, unfinished
        assert kept.id == child.agreement
        rental = await client.attach(child.agreement)
        lines: list[str] = []
        with trio.fail_after(120):
            result = await rental.run(on_log=lambda c: lines.extend(c.data.splitlines()))
        reattached_s = time.monotonic() - killed_at
        assert result.state is JobState.FINISHED and result.exit_code == 0
        assert lines[-1] == "done" and "tick 25" in lines  # the rest of the logs...
        assert "started" not in lines  # ...from where the killed node left off (no repeat from the start)
        seen = child.lines + lines
        assert [f"tick {i}" for i in range(1, 26)] == [x for x in dict.fromkeys(seen) if x.startswith("tick")]
        out = await rental.download_result(tmp_path / "result")  # and the result
        assert [p.name for p in out] == ["summary.txt"]
        assert (tmp_path / "result" / "summary.txt").read_text() == "all 25 ticks\n"
        view = result.escrow
        assert view is not None and view.status is EscrowStatus.CLOSED and view.vault_balance == 0
        assert view.paid + view.fee_paid + view.refunded == view.deposited == 60 * PRICE
        check = result.reconciliation
        assert check is not None and not check.over_accrued  # billed only for metered minutes
        assert view.claimed_minutes < 60  # the ~25 ledger minutes it ran, not the deposit
        assert await client.detached_rentals() == []  # settled: nothing left to re-attach
        print(f"re-attached and finished {reattached_s:.1f} s after the kill; billed {view.claimed_minutes} of 60 "
              f"minutes for a ~25-minute job")


async def test_stop_on_disconnect_stops_the_job_when_the_renter_dies(network: DemoNetwork, tmp_path: Path) -> None:
    child = ChildRenter(network, tmp_path / "renter", script(50), stop=True)
    try:
        with trio.fail_after(90):
            await child.until("tick 1")
    finally:
        child.kill()
    killed_at = time.monotonic()
    async with renter(network, tmp_path / "watcher", "RTX 4090") as client:
        assert client.ledger is not None
        # the job would run 50 more seconds (ledger minutes); stopped, its escrow closes long before
        with trio.fail_after(40):
            while (view := await client.ledger.fetch(child.escrow)).status is not EscrowStatus.CLOSED:
                await trio.sleep(0.2)
        closed_s = time.monotonic() - killed_at
        assert view.claimed_minutes < 40 and view.paid + view.fee_paid + view.refunded == view.deposited
        print(f"stop_on_disconnect: escrow closed {closed_s:.1f} s after the renter was killed "
              f"({view.claimed_minutes} minutes billed)")


async def test_the_result_is_pushed_to_the_renters_bucket_while_its_node_is_stopped(
        network: DemoNetwork, tmp_path: Path) -> None:
    data_dir = tmp_path / "renter"
    async with renter(network, data_dir, "RTX 4090", faucet=False) as client:  # the renter's identity
        key = client.key
        link = await client.upload_link(network.ledger_url, "results", "detached/result.tar",
                                        max_bytes=1024 * 1024, ttl_s=3600)
    assert "sig=" in link
    child = ChildRenter(network, data_dir, script(4), stop=False, upload=link)
    try:
        with trio.fail_after(90):
            await child.until("tick 1")
    finally:
        child.kill()  # the renter's node goes away; the job runs on and its result is pushed
    pushed_to = "results/detached/result.tar"
    async with httpx.AsyncClient(base_url=network.ledger_url, timeout=30) as http:
        auth = {"authorization": f"Bearer {await BootstrapSession(key, time.time).token(http)}"}
        with trio.fail_after(90):
            while (got := await http.get(f"/api/v1/storage/{pushed_to}", headers=auth)).status_code == 404:
                await trio.sleep(0.5)
    assert got.status_code == 200, got.text
    (tmp_path / "result.tar").write_bytes(got.content)
    safe_unpack(tmp_path / "result.tar", tmp_path / "result")
    assert (tmp_path / "result" / "summary.txt").read_text() == "all 4 ticks\n"


async def test_a_frozen_provider_is_noticed_within_the_silence_bound(network: DemoNetwork, tmp_path: Path) -> None:
    frozen = network.procs["frozen"]
    async with renter(network, tmp_path, "RTX 3090") as client:
        rental = await client.rent(script=script(120), max_minutes=200, gpu_model="RTX 3090")
        stopped_at: list[float] = []

        def freeze_on_tick(chunk: LogChunk) -> None:
            if "tick 2" in chunk.data and not stopped_at:
                frozen.send_signal(signal.SIGSTOP)  # a laptop lid closed, a paused VM
                stopped_at.append(time.monotonic())

        try:
            with trio.fail_after(90), pytest.raises(JobFailed) as info:
                await rental.run(on_log=freeze_on_tick)
            noticed_s = time.monotonic() - stopped_at[0]
        finally:
            frozen.send_signal(signal.SIGCONT)
        cause: Any = info.value.__cause__
        assert isinstance(cause, ProviderSilentError) and cause.state == "running"
        view = await rental.escrow_state()
        assert view.status is EscrowStatus.CLOSED  # the renter stopped paying
        assert view.paid + view.fee_paid + view.refunded == view.deposited
        print(f"frozen provider noticed {noticed_s:.1f} s after SIGSTOP (bound {SILENCE_BOUND_S:.0f} s); "
              f"{view.claimed_minutes} minutes billed")

