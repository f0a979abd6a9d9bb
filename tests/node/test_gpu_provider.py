"""A provider on NVIDIA GPUs (the NVML test double ``FakeNvml`` injected into ``NvmlGpus``):
inventory, engine pricing with its inputs in the offer, leases and capacity, the jobs' device
lists, receipts with samples and claims bounded by metered minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
import trio

from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy, gpu_device_requests
from dgpu.node.adapters.gpu import NvmlGpus
from dgpu.node.adapters.store import Store
from dgpu.node.app import scan_offered
from dgpu.node.config import NodeConfig
from dgpu.node.errors import ConfigError
from dgpu.node.ports.execution import JobSpec, ResourceLimits
from dgpu.node.ports.gpu import GpuScan
from dgpu.node.provider import meter_minute_s
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.meter import Meter, build_usage_receipts
from dgpu.node.services.offers import OfferBook
from dgpu.node.services.pricing import MarketPricer, engine_basis
from dgpu.node.services.publisher import OfferPublisher, OfferTerms
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import JobRequest, Offer
from dgpu.protocol.pricing import MultiplierBounds, PriceInputs, priced

from .fake_nvml import TWO_H100, FakeNvml

NOW = 1_800_000_000
BOOT = "/ip4/127.0.0.1/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def provider_config(tmp_path: Path, **kw: Any) -> NodeConfig:
    return NodeConfig(role="provider", bootstrap=(BOOT,), data_dir=tmp_path, **kw)


async def two_h100(tmp_path: Path, **kw: Any) -> GpuScan:
    return await scan_offered(provider_config(tmp_path, **kw), NvmlGpus(nvml=FakeNvml(gpus=list(TWO_H100))))


def request(key: SigningKey, **kw: Any) -> JobRequest:
    return JobRequest(request_id="ab" * 8, renter=SigningKey(b"r" * 32).public_key.wallet,
                      provider=key.public_key.wallet, offer_seq=1, max_minutes=5, max_price_per_minute=10**9,
                      gpu_model="H100", image="img", command=("true",), **kw)


class Market:
    """The provider's pricing pieces as ``provider.start_offering`` wires them."""

    def __init__(self, key: SigningKey, scan: GpuScan, *, bounds: MultiplierBounds | None = None,
                 max_jobs: int = 2) -> None:
        rate, basis = engine_basis(scan.gpus, decimals=6)
        self.inventory = Inventory(scan.gpus, owner=key.public_key.wallet, price_per_gpu_minute=rate, pricing=basis,
                                   max_jobs=max_jobs, clock=lambda: NOW)
        self.book = OfferBook()
        self.requests = 0
        self.pricer = MarketPricer(self.inventory, self.book, own_wallet=key.public_key.wallet, decimals=6,
                                   requests_seen=lambda: self.requests, clock=lambda: NOW, bounds=bounds)
        self.changes = 0

        async def publish(data: bytes) -> None:
            del data

        self.publisher = OfferPublisher(key, self.inventory, OfferTerms(mint=key.public_key.wallet, ledger="dev"),
                                        publish, clock=lambda: NOW, clock_ms=lambda: NOW * 1000,
                                        reprice=self.pricer.reprice)

    async def offer(self) -> Offer:
        offer = await self.publisher.publish_now()
        assert offer is not None
        return offer


async def test_no_gpu_flags_offers_the_doubles_two_h100_at_the_engines_price(tmp_path: Path, key: SigningKey) -> None:
    scan = await two_h100(tmp_path)
    assert [g.model for g in scan.gpus] == ["H100", "H100"] and not scan.simulated
    offer = await Market(key, scan).offer()
    assert not offer.simulated and offer.gpu_count == 2 and offer.free_gpus == 2
    assert [(g.model, g.vram_mib, g.count, g.compute_capability) for g in offer.gpus] == [("H100", 81_920, 2, "9.0")]
    basis = offer.pricing
    assert basis is not None and basis.source == "engine"
    # no requests, one offer of the model (ours): demand 0 / supply 1, clamped to the 0.5 floor
    assert (basis.model, basis.vram_mib, basis.power_limit_w, basis.demand, basis.supply) == ("H100", 81_920, 700, 0, 1)
    assert basis.multiplier_bps == 5_000
    # (3.00 + 80 GB x 0.02 + 700 W x 0.001) dGPU/h = 5.30; x 0.5 = 2.65/h = 44 166.67 base units/min, rounded up
    assert basis.engine_rate == 88_334 and offer.price_per_minute == 44_167
    assert offer.price_per_minute == priced(PriceInputs("H100", 81_920, 700), basis.multiplier_bps, 6).rate


async def test_demand_and_supply_move_the_multiplier_inside_the_bounds(tmp_path: Path, key: SigningKey,
                                                                       offer_factory: Any) -> None:
    market = Market(key, await two_h100(tmp_path), bounds=MultiplierBounds.parse("0.8:1.5"))
    assert (await market.offer()).pricing.multiplier_bps == 8_000  # type: ignore[union-attr]
    market.requests = 3  # three requests in the window, and another provider's H100 in the book
    other = SigningKey(b"o" * 32)
    rival = offer_factory(other, now=NOW, model="H100", vram=81_920)
    assert market.book.put(rival, "peer-o", now=NOW)
    offer = await market.offer()
    assert offer.pricing is not None and (offer.pricing.demand, offer.pricing.supply) == (3, 2)
    assert offer.pricing.multiplier_bps == 15_000  # 3 / 2 = 1.5, the band's top
    market.requests = 30
    assert (await market.offer()).pricing.multiplier_bps == 15_000  # type: ignore[union-attr]


async def test_a_price_override_is_kept_and_said_in_the_offer(tmp_path: Path, key: SigningKey) -> None:
    market = Market(key, await two_h100(tmp_path))
    market.inventory.set_price(50_000)
    market.requests = 100
    offer = await market.offer()
    assert offer.price_per_minute == 50_000
    assert offer.pricing is not None and offer.pricing.source == "override" and offer.pricing.engine_rate == 88_334


async def test_two_one_gpu_rentals_get_distinct_uuids_and_capacity_follows_leases(tmp_path: Path,
                                                                                  key: SigningKey) -> None:
    market = Market(key, await two_h100(tmp_path))
    assert market.inventory.max_jobs == 2
    first = market.inventory.lease("a" * 64, request(key), lapses_at=NOW + 60)
    second = market.inventory.lease("b" * 64, request(key), lapses_at=NOW + 60)
    assert first is not None and second is not None
    assert {first.device_ids, second.device_ids} == {("GPU-11111111-aaaa",), ("GPU-22222222-bbbb",)}
    assert market.publisher._wake.is_set()  # a lease republishes: capacity is in the offer
    assert (await market.offer()).free_gpus == 0
    assert market.inventory.lease("c" * 64, request(key), lapses_at=NOW + 60) is None
    market.inventory.release("a" * 64)
    assert (await market.offer()).free_gpus == 1


async def test_gpu_selection_and_the_refusal_without_gpus(tmp_path: Path) -> None:
    only = await two_h100(tmp_path, gpu_select=("1",))
    assert [g.uuid for g in only.gpus] == ["GPU-22222222-bbbb"]
    by_uuid = await two_h100(tmp_path, gpu_select=("GPU-11111111-aaaa",))
    assert [g.index for g in by_uuid.gpus] == [0]
    with pytest.raises(ConfigError, match="matches no GPU"):
        await two_h100(tmp_path, gpu_select=("7",))
    with pytest.raises(ConfigError) as refused:
        await scan_offered(provider_config(tmp_path), NvmlGpus(nvml=FakeNvml(fail_init=True)))
    assert "NVIDIA driver" in str(refused.value) and "--simulated-gpu" in str(refused.value)


def test_the_provider_command_without_nvml_exits_with_both_ways_out(tmp_path: Path) -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGPU_")}
    proc = subprocess.run([sys.executable, "-m", "dgpu.client.main", "node", "--role", "provider", "--bootstrap",
                           BOOT, "--data-dir", str(tmp_path / "p")], capture_output=True, text=True, timeout=60,
                          env=env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no GPU to offer" in proc.stderr and "NVIDIA driver" in proc.stderr and "--simulated-gpu" in proc.stderr


class RecordingDockerApi:
    """What the Docker SDK's low-level client is asked to create (no GPU runtime exists here)."""

    def __init__(self) -> None:
        self.host_config: dict[str, Any] = {}
        self.container: dict[str, Any] = {}

    def create_host_config(self, **kw: Any) -> dict[str, Any]:
        self.host_config = kw
        return kw

    def create_container(self, **kw: Any) -> dict[str, str]:
        self.container = kw
        return {"Id": "c0"}

    def inspect_image(self, image: str) -> dict[str, Any]:
        return {}


async def test_the_docker_device_request_carries_exactly_the_leased_uuids(tmp_path: Path) -> None:
    api = RecordingDockerApi()
    client = SimpleNamespace(api=api, info=lambda: {"Runtimes": {"runc": {}}})
    executor = DockerExecutor(client, DockerPolicy(workspace_root=tmp_path, instance="t"))  # type: ignore[arg-type]
    leased = ("GPU-11111111-aaaa", "GPU-22222222-bbbb")
    spec = JobSpec(job_id="0123456789abcdef", rental_id="1", image="img", command=("nvidia-smi",), gpu_uuids=leased,
                   env={"NVIDIA_VISIBLE_DEVICES": "all"})
    executor._create(spec, ResourceLimits(), tmp_path, SimpleNamespace(mounted=True, cap=0))  # type: ignore[arg-type]
    (request,) = api.host_config["device_requests"]
    assert request["Driver"] == "nvidia" and request["DeviceIDs"] == list(leased)
    assert request["Capabilities"] == [["compute", "utility"]]
    assert api.container["environment"]["NVIDIA_VISIBLE_DEVICES"] == ",".join(leased)
    assert gpu_device_requests(()) == []
    assert not await executor.has_nvidia_runtime()  # start-up refuses Docker GPU jobs on such an engine


async def test_receipts_carry_the_leased_gpus_samples(tmp_path: Path) -> None:
    fake = FakeNvml(gpus=list(TWO_H100))
    store = await Store.open(tmp_path / "m.db")
    job = "0123456789abcdef"
    await store.add_job(job, "r", "script", {})
    meter = Meter(store, NvmlGpus(nvml=fake), interval_s=0.2, samples_per_interval=2)
    minutes: list[object] = []
    two = trio.Event()

    async def sink(minute: object) -> None:
        minutes.append(minute)
        if len(minutes) == 2:
            two.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: meter.meter_job(job, time.time(), ["GPU-22222222-bbbb"], on_minute=sink))
        with trio.fail_after(30):
            await two.wait()
        nursery.cancel_scope.cancel()
    receipts = await build_usage_receipts(store, job, "ab" * 32)
    await store.close()
    assert len(receipts) >= 2 and all([g.uuid for g in r.gpus] == ["GPU-22222222-bbbb"] for r in receipts)
    assert receipts[0].gpus[0].utilization_pct == 37 and receipts[0].gpus[0].power_mw == 200_000
    assert set(fake.sampled) == {"GPU-22222222-bbbb"}  # the other, unleased GPU is never sampled


def test_the_gpu_check_script_says_clearly_that_it_needs_nvml() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver: run scripts/gpu-check.sh itself")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([str(root / "scripts" / "gpu-check.sh")], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2 and "NVML is not usable here" in proc.stderr and "--simulated-gpu" in proc.stderr


def test_the_meter_and_an_accelerated_ledger_agree_on_a_minute(tmp_path: Path) -> None:
    assert meter_minute_s(provider_config(tmp_path), 60) == 1.0  # the demo's x60 development ledger
    assert meter_minute_s(provider_config(tmp_path), 1) == 60.0  # Solana's clock
    assert meter_minute_s(provider_config(tmp_path, meter_interval_s=0.5), 60) == 0.5  # explicit (tests)
