"""GPU inventory: the real pynvml without a driver, and parsing through FakeNvmlForTests."""

from __future__ import annotations

import pynvml
import pytest

from dgpu.node.adapters.gpu import NvmlGpus, SimulatedGpus, normalize_gpu_model
from dgpu.protocol.messages import GpuSpec

from .fake_nvml import FakeNvml as FakeNvmlForTests


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 4080", "RTX 4080"),
        ("NVIDIA GeForce RTX 4070 Ti SUPER", "RTX 4070 Ti SUPER"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("Apple M3 Ultra", "M3 Ultra"),
        ("Apple M2 Ultra", "M2 Ultra"),
        ("Tesla T4", "T4"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("NVIDIA  Some   Future GPU", "Some Future GPU"),
    ],
)
def test_normalize_gpu_model(raw: str, key: str) -> None:
    assert normalize_gpu_model(raw) == key


async def test_real_pynvml_without_driver_gives_empty_inventory() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver: the no-driver path cannot be shown here")
    inventory = await NvmlGpus().inventory()
    assert inventory.gpus == () and not inventory.available
    assert "no GPUs" in inventory.message and "NVML" in inventory.message
    assert await NvmlGpus().sample(["GPU-x"]) == []


async def test_inventory_parsing_with_fake_nvml() -> None:
    fake = FakeNvmlForTests()
    inventory = await NvmlGpus(nvml=fake).inventory()
    assert inventory.available and not inventory.simulated
    first, second = inventory.gpus
    assert (first.model, first.uuid, first.memory_total_bytes) == ("RTX 4090", "GPU-aaaa", 24 * 1024**3)
    assert first.power_limit_mw == 450_000 and first.compute_capability == "8.9"
    assert first.driver_version == "550.54.15" and first.cuda_version == "12.4"
    assert second.model == "H100" and second.power_limit_mw is None  # not supported → None
    assert fake.inits == fake.shutdowns == 1


async def test_samples_with_fake_nvml_skip_unknown_uuid() -> None:
    samples = await NvmlGpus(nvml=FakeNvmlForTests()).sample(["GPU-bbbb", "GPU-nope"])
    assert [(s.uuid, s.utilization_pct, s.power_draw_mw, s.temperature_c) for s in samples] == [
        ("GPU-bbbb", 37, 200_000, 61)
    ]


async def test_driver_not_loaded_message() -> None:
    inventory = await NvmlGpus(nvml=FakeNvmlForTests(fail_init=True)).inventory()
    assert inventory.gpus == () and "kernel driver is not loaded" in inventory.message


async def test_simulated_gpus_are_marked_stable_and_never_sampled() -> None:
    specs = (GpuSpec(model="RTX 4090", vram_mib=24_576, count=2, simulated=True),)
    scan = await SimulatedGpus(specs, owner="wallet-a").inventory()
    assert scan.simulated and all(g.simulated for g in scan.gpus) and "SIMULATED" in scan.message
    uuids = [g.uuid for g in scan.gpus]
    assert len(set(uuids)) == 2 and all(u.startswith("GPU-sim-") for u in uuids)
    assert [g.uuid for g in (await SimulatedGpus(specs, owner="wallet-a").inventory()).gpus] == uuids
    assert not set(uuids) & {g.uuid for g in (await SimulatedGpus(specs, owner="wallet-b").inventory()).gpus}
    assert [(g.model, g.vram_mib) for g in scan.gpus] == [("RTX 4090", 24_576)] * 2
    assert await SimulatedGpus(specs, owner="wallet-a").sample(uuids) == []
