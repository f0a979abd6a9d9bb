"""Faults of the nodes themselves (issue 16 item 8): a provider killed and restarted, a renter
killed and restarted, a provider frozen (SIGSTOP) and resumed. One bootstrap node (development
ledger, x60: a wall second is a ledger minute) and one provider per fault, separate processes; the
renter is ``dgpu.client`` in the test process, or a process of its own when it is the one killed.

After each fault the ledger is audited (``harness.audit``) and the minutes billed beyond what the
job ran are bounded: the rules' rounding (a started minute counts) plus the detection time.
Measured figures go to the test's output (``-s`` shows them).
"""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dgpu.client import Client, JobFailed
from dgpu.protocol.messages import LogChunk

from .harness import (
    PRICE,
    FaultNetwork,
    audit,
    escrows,
    fault_network,
    job_processes,
    over_billed,
    script,
)

pytestmark = pytest.mark.integration

RUNNER = Path(__file__).with_name("renter_runner.py")


@pytest.fixture(scope="module")
def network() -> Iterator[FaultNetwork]:
    with fault_network(("p-kill", "A100:81920:1"), ("p-freeze", "H100:81920:1"),
                       ("p-renter", "RTX 4090:24576:1")) as net:
        yield net


async def ledger_now(client: Client) -> int:
    assert client.ledger is not None
    return await client.ledger.now()


def settlement_rows(db: Path) -> list[tuple[str, str | None]]:
    """(escrow, outcome or None while pending) of a node's settlement store."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(a, o if d is not None else None)
                for a, o, d in conn.execute("SELECT address, outcome, done_at FROM settlements")]
    finally:
        conn.close()


def report(fault: str, **figures: object) -> None:
    print(f"\nFAULT {fault}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def test_provider_killed_mid_job_and_restarted(network: FaultNetwork, tmp_path: Path) -> None:
    marker = "dgpu-fault-" + secrets.token_hex(4)
    async with Client.connect([network.addrs["bootstrap"]], ledger_url=network.ledger_url, data_dir=tmp_path,
                              accept_simulated=True) as client:
        assert client.ledger is not None
        await client.ledger.faucet(1_000_000)  # type: ignore[attr-defined]
        offers = await client.find_offers(gpu_model="A100", wait_s=30)
        assert offers, "the provider's offer never arrived"
        rental = await client.rent(offers[0], script=script(60), command=[marker], max_minutes=30)
        killed: list[tuple[float, int]] = []

        async def kill_on_tick(chunk: LogChunk) -> None:
            if "tick 2" in chunk.data and not killed:
                network.kill("p-kill")
                killed.append((time.monotonic(), await ledger_now(client)))

        with trio.fail_after(90), pytest.raises(JobFailed, match="lost"):
            await rental.run(on_log=kill_on_tick)
        detected_s = time.monotonic() - killed[0][0]
    assert rental.escrow is not None
    network.restart_provider("p-kill", "A100:81920:1")
    with trio.fail_after(60):
        while "reconciled after restart" not in network.log("p-kill"):
            await trio.sleep(0.2)
    assert job_processes(marker) == []  # nothing of the job runs on after the restart
    row = audit(network.ledger_db)[rental.escrow.address]
    over = over_billed(row, killed[0][1])
    report("provider kill+restart", detected_s=round(detected_s, 1), over_billed_minutes=over)
    assert over <= 1 + int(detected_s) + 1  # rounding + detection (+1 for the close's own latency)


async def test_renter_killed_mid_job_and_restarted(network: FaultNetwork, tmp_path: Path) -> None:
    marker = "dgpu-fault-" + secrets.token_hex(4)
    data_dir = tmp_path / "renter"
    base = [sys.executable, str(RUNNER), network.addrs["bootstrap"], network.ledger_url, str(data_dir)]
    proc = await trio.lowlevel.open_process([*base, "rent", "RTX 4090", "6", marker], stdout=subprocess.PIPE)
    escrow = ""
    buf = b""
    assert proc.stdout is not None
    with trio.fail_after(150):  # a fresh process: imports, joining, the offer's gossip, on a loaded machine
        while "tick 2" not in buf.decode(errors="replace"):
            data = await proc.stdout.receive_some(4096)
            assert data, "the renter ended before its job ran"
            buf += data
            for line in buf.decode(errors="replace").splitlines():
                if '"rented"' in line:
                    escrow = json.loads(line)["escrow"]
    proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await proc.wait()
    assert escrow
    # the provider ends the rental (stops the job or lets it finish) and closes the escrow
    with trio.fail_after(60):
        while (row := escrows(network.ledger_db)[escrow]).status != "closed":
            await trio.sleep(0.1)
    closed_s = time.monotonic() - killed_at
    settlements = data_dir / "settlements.sqlite3"
    assert settlement_rows(settlements) == [(escrow, None)]  # the killed renter's guard, pending
    resumed = await trio.lowlevel.open_process([*base, "resume"], stdout=subprocess.PIPE)
    with trio.fail_after(90):
        out = b""
        assert resumed.stdout is not None
        while b'"settled"' not in out:
            data = await resumed.stdout.receive_some(4096)
            assert data, "the restarted renter ended before its settlements were done"
            out += data
    await resumed.wait()
    [(address, outcome)] = settlement_rows(settlements)  # the restarted renter took it up: done
    assert address == escrow and outcome == "found closed"
    row = audit(network.ledger_db)[escrow]
    assert row.started_at is not None
    ran_until = row.started_at + 6 * 60 + 60  # at most the script's 6 s (plus its start) at x60
    report("renter kill+restart", escrow_closed_after_s=round(closed_s, 1),
           over_billed_minutes=over_billed(row, ran_until), claimed_minutes=row.claimed_minutes)
    assert over_billed(row, ran_until) <= 1
    assert job_processes(marker) == []


async def test_provider_frozen_and_resumed(network: FaultNetwork, tmp_path: Path) -> None:
    async with Client.connect([network.addrs["bootstrap"]], ledger_url=network.ledger_url, data_dir=tmp_path,
                              accept_simulated=True) as client:
        assert client.ledger is not None
        await client.ledger.faucet(1_000_000)  # type: ignore[attr-defined]
        offers = await client.find_offers(gpu_model="H100", wait_s=30)
        assert offers, "the provider's offer never arrived"
        rental = await client.rent(offers[0], script=script(10), max_minutes=30)
        provider = network.procs["p-freeze"]
        frozen: list[float] = []

        async def freeze_on_tick(chunk: LogChunk) -> None:
            if "tick 2" in chunk.data and not frozen:
                provider.send_signal(signal.SIGSTOP)  # a laptop lid closed, a paused VM
                frozen.append(time.monotonic())
                await trio.sleep(8)
                provider.send_signal(signal.SIGCONT)

        outcome = "finished"
        with trio.fail_after(120):
            try:
                result = await rental.run(on_log=freeze_on_tick)
                outcome = f"{result.state.value} ({result.reason})"
            except JobFailed as exc:  # a clear reason is an acceptable end too
                outcome = f"failed: {exc}"
        ended_at = await ledger_now(client)
    assert provider.poll() is None, "the provider died after it was resumed"
    log = network.log("p-freeze")
    for crash in ("AssertionError", "BrokenResourceError"):
        assert crash not in log, f"the provider's log shows {crash} after the freeze"
    assert rental.escrow is not None
    row = audit(network.ledger_db)[rental.escrow.address]
    over = over_billed(row, ended_at)
    report("provider freeze 8 s + resume", outcome=outcome, over_billed_minutes=over,
           claimed_minutes=row.claimed_minutes)
    assert over <= 1
    assert row.paid + row.fee_paid == row.claimed_minutes * PRICE
