"""The node's metrics: ledger calls counted by the decorator, GPUs sampled by the monitor, money and
minutes from receipts, and an exposition that ``promtool check metrics`` accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import generate_latest

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.node.adapters.gpu import NvmlGpus
from dgpu.node.adapters.metrics_http import serve_metrics
from dgpu.node.metrics import NodeMetrics, RuntimeStats
from dgpu.node.services.billing import STOPPED_EXHAUSTED, STOPPED_RENTER_CLOSED
from dgpu.node.services.gpu_monitor import GpuMonitor
from dgpu.node.services.instrumented_ledger import InstrumentedLedger, outcome_of
from dgpu.node.services.inventory import Inventory
from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.ledger import EscrowHandle, EscrowReceipt, EscrowRefused, LedgerTimeout, TransportError

from .fake_nvml import TWO_H100, FakeNvml
from .test_billing import RATE, T0, dev_ledger, open_rental
from .test_gpu_provider import request

NOW = 1_800_000_000


def sample_value(metrics: NodeMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_outcomes_follow_the_ledger_error_tree() -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(EscrowRefused(EscrowErrorCode.ESCROW_CLOSED)) == "refused"
    assert outcome_of(LedgerTimeout("slow")) == "timeout"
    assert outcome_of(TransportError("down")) == "transport"
    assert outcome_of(ValueError("bug")) == "error"


async def test_every_ledger_call_is_counted_with_its_outcome_and_latency(tmp_path: Path) -> None:
    metrics = NodeMetrics()
    async with dev_ledger(tmp_path) as ledgers:
        provider = InstrumentedLedger(ledgers.provider, metrics)
        handle = await open_rental(ledgers)
        assert (await provider.fetch(handle.address)).address == handle.address
        with pytest.raises(EscrowRefused):  # not started: nothing to claim
            await provider.claim(handle)
        assert await provider.faucet(10) == 10  # beyond the port: passed through, counted
        assert provider.wallet == ledgers.provider.wallet and provider.ledger == ledgers.provider.ledger
    assert sample_value(metrics, "dgpu_ledger_calls_total", {"action": "fetch", "outcome": "ok"}) == 1
    assert sample_value(metrics, "dgpu_ledger_calls_total", {"action": "claim", "outcome": "refused"}) == 1
    assert sample_value(metrics, "dgpu_ledger_calls_total", {"action": "claim", "outcome": "ok"}) == 0
    assert sample_value(metrics, "dgpu_ledger_calls_total", {"action": "faucet", "outcome": "ok"}) == 1
    assert sample_value(metrics, "dgpu_ledger_call_duration_seconds_count", {"action": "claim"}) == 1


async def test_an_unreachable_ledger_counts_as_transport() -> None:
    metrics = NodeMetrics()
    ledger = InstrumentedLedger(DevLedgerEscrow("http://127.0.0.1:9", SigningKey(b"k" * 32)), metrics)
    try:
        with pytest.raises(TransportError):
            await ledger.now()
    finally:
        await ledger.aclose()
    assert sample_value(metrics, "dgpu_ledger_calls_total", {"action": "now", "outcome": "transport"}) == 1


async def test_the_monitor_reports_samples_and_leases_of_every_gpu() -> None:
    nvml = FakeNvml(gpus=list(TWO_H100))
    gpus = NvmlGpus(nvml=nvml)
    scan = await gpus.inventory()
    inventory = Inventory(scan.gpus, owner="me", price_per_gpu_minute=10, max_jobs=2, clock=lambda: NOW)
    monitor = GpuMonitor(inventory, gpus)
    assert [r.sample for r in monitor.readings()] == [None, None]  # nothing before the first sample
    await monitor.sample_once()
    lease = inventory.lease("a" * 32, request(SigningKey(b"p" * 32)), lapses_at=NOW + 60)
    assert lease is not None
    metrics = NodeMetrics(runtime=lambda: RuntimeStats(gpus=tuple(monitor.readings())))
    leased, free = (dict(model="H100", uuid=u) for u in (lease.uuids[0], *(g.uuid for g in inventory.free())))
    assert sample_value(metrics, "dgpu_gpu_leased", leased) == 1 and sample_value(metrics, "dgpu_gpu_leased", free) == 0
    assert sample_value(metrics, "dgpu_gpu_utilization_ratio", free) == pytest.approx(0.37)
    assert sample_value(metrics, "dgpu_gpu_power_watts", free) == 200
    assert sample_value(metrics, "dgpu_gpu_temperature_celsius", free) == 61
    assert sample_value(metrics, "dgpu_gpu_memory_used_bytes", free) == 1024**3
    inventory.release("a" * 32)
    assert sample_value(metrics, "dgpu_gpu_leased", leased) == 0


async def test_a_gpu_the_source_cannot_sample_has_no_invented_figures() -> None:
    from dgpu.node.adapters.gpu import SimulatedGpus
    from dgpu.node.config import parse_gpu

    source = SimulatedGpus([parse_gpu("RTX 4090:24576", simulated=True)], owner="me")
    inventory = Inventory((await source.inventory()).gpus, owner="me", price_per_gpu_minute=10, max_jobs=1,
                          clock=lambda: NOW)
    monitor = GpuMonitor(inventory, source)
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(monitor.run)
            nursery.cancel_scope.cancel()
    text = generate_latest(NodeMetrics(runtime=lambda: RuntimeStats(gpus=tuple(monitor.readings())))
                           .registry).decode()
    assert 'dgpu_gpu_leased{model="RTX 4090"' in text
    assert "dgpu_gpu_utilization_ratio{" not in text and "dgpu_gpu_power_watts{" not in text


def test_receipts_count_money_and_claimed_time_in_base_units() -> None:
    metrics = NodeMetrics()
    handle = EscrowHandle(ledger="development", address="E" * 32, renter="r", provider="p", rental_id=1)
    claim = EscrowReceipt(action="claim", escrow=handle, now=T0, tx="t", paid=3 * RATE * 95 // 100,
                          fee=3 * RATE * 5 // 100)
    metrics.receipt(claim, RATE)
    metrics.receipt(claim, None)  # a rental whose rate is unknown: money only
    for _ in range(4):
        metrics.minute_metered("job")
    metrics.rental_ended(None)
    metrics.rental_ended(STOPPED_RENTER_CLOSED)
    metrics.rental_ended(STOPPED_EXHAUSTED)
    assert sample_value(metrics, "dgpu_rental_claimed_seconds_total") == 3 * 60
    assert sample_value(metrics, "dgpu_rental_metered_seconds_total") == 4 * 60
    assert sample_value(metrics, "dgpu_earned_base_units_total") == 2 * claim.paid
    assert sample_value(metrics, "dgpu_fees_base_units_total") == 2 * claim.fee
    for outcome in ("settled", "renter_closed", "exhausted"):
        assert sample_value(metrics, "dgpu_rentals_ended_total", {"outcome": outcome}) == 1


def test_the_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("promtool must be installed in CI (Debian's prometheus package)")
        pytest.skip("promtool is not installed")
    metrics = NodeMetrics(runtime=lambda: RuntimeStats(
        peers=2, offers_rejected={"bad_signature": 1}, negotiations={"agreed": 1, "no_capacity": 2},
        jobs={"running": 1}, rentals={"agreed": 0, "billing": 1}))
    metrics.ledger_call("claim", "ok", 0.01)
    metrics.http_latency.labels("/metrics", "GET", "200").observe(0.001)
    exposition = generate_latest(metrics.registry)
    assert b"_created" not in exposition  # no creation-time series beside every counter
    result = subprocess.run([promtool, "check", "metrics"], input=exposition,
                            capture_output=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def test_the_metrics_server_serves_the_registry_and_nothing_else() -> None:
    metrics = NodeMetrics(runtime=lambda: RuntimeStats(peers=3))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, metrics.registry, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            scraped = await http.get("/metrics")
            assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
            assert "dgpu_peers 3.0" in scraped.text
            assert (await http.get("/healthz")).text == "ok\n"
            assert (await http.get("/api/v1/jobs")).status_code == 404
            assert (await http.post("/metrics", content=b"x")).status_code in (405, 413)
        nursery.cancel_scope.cancel()


def test_the_metrics_flags_are_off_by_default_and_read_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    from dgpu.client.main import parse_args

    monkeypatch.setenv("HOME", str(tmp_path))  # no default config file
    args = parse_args(["node", "--role", "provider", "--bootstrap", "/p2p/x"], {})
    assert args.metrics_port is None and args.metrics_host == "127.0.0.1"
    assert parse_args(["bootstrap", "--metrics-port", "0"], {}).metrics_port == 0
    env = {"DGPU_METRICS_PORT": "9401", "DGPU_METRICS_HOST": "::1"}
    args = parse_args(["bootstrap"], env)
    assert args.metrics_port == 9401 and args.metrics_host == "::1"
    assert parse_args(["bootstrap", "--metrics-port", "9500"], env).metrics_port == 9500  # flags win
