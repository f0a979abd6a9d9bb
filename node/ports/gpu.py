"""The GPU source port: which GPUs this machine has, and one sample of each on demand.

``adapters.gpu.NvmlGpus`` (NVML) and, on development networks only, ``adapters.gpu.SimulatedGpus``
implement :class:`GpuSource`. The provider's ``services.inventory.Inventory`` reads the source
once at start and owns the GPUs from then on (prices, leases); the meter samples the GPUs of a
job's lease through the same source. No GPU library, or no GPU, is a normal state: an empty
:class:`GpuScan` whose ``message`` says why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dgpu.protocol.messages import GpuSpec

__all__ = ["GpuInfo", "GpuSample", "GpuSampler", "GpuScan", "GpuSource", "simulated_gpus"]


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    uuid: str  #: NVML's "GPU-..."; simulated GPUs have "GPU-sim-<hash>"
    model: str  #: pricing-table key (normalize_gpu_model of raw_name)
    raw_name: str
    memory_total_bytes: int
    power_limit_mw: int | None  #: enforced power limit, milliwatts; None if not reported
    compute_capability: str | None  #: "8.9"
    driver_version: str
    cuda_version: str | None  #: "12.4"
    simulated: bool  #: True only for a development network's simulated inventory

    @property
    def vram_mib(self) -> int:
        return self.memory_total_bytes // (1024 * 1024)


@dataclass(frozen=True, slots=True)
class GpuSample:
    uuid: str
    at: float  #: wall clock (unix seconds)
    utilization_pct: int | None
    memory_used_bytes: int | None
    power_draw_mw: int | None
    temperature_c: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "at": self.at,
            "utilization_pct": self.utilization_pct,
            "memory_used_bytes": self.memory_used_bytes,
            "power_draw_mw": self.power_draw_mw,
            "temperature_c": self.temperature_c,
        }


@dataclass(frozen=True, slots=True)
class GpuScan:
    """What a source found: the GPUs, whether the library answered, and a line for the logs."""

    gpus: tuple[GpuInfo, ...]
    available: bool  #: the GPU library loaded and answered
    message: str  #: human-readable: what was found, or why nothing was

    @property
    def simulated(self) -> bool:
        return any(g.simulated for g in self.gpus)


class GpuSampler(Protocol):
    async def sample(self, uuids: Sequence[str]) -> list[GpuSample]:
        """One sample per GPU in ``uuids`` (those the source cannot find are left out)."""
        ...


class GpuSource(GpuSampler, Protocol):
    async def inventory(self) -> GpuScan:
        """Every GPU the source reports; empty with a clear message when none."""
        ...


def simulated_gpus(specs: Sequence[GpuSpec], *, owner: str) -> tuple[GpuInfo, ...]:
    """The records of simulated GPUs (development networks only): ``simulated=True`` and stable
    fake UUIDs ``GPU-sim-<hash>`` (of the owner's wallet, the model, the VRAM and the ordinal, so a
    restart keeps them and two providers never share one)."""
    gpus: list[GpuInfo] = []
    for spec in specs:
        for _ in range(spec.count):
            seed = f"{owner}/{spec.model}/{spec.vram_mib}/{len(gpus)}".encode()
            gpus.append(GpuInfo(
                index=len(gpus), uuid="GPU-sim-" + hashlib.sha256(seed).hexdigest()[:24], model=spec.model,
                raw_name=spec.model, memory_total_bytes=spec.vram_mib * 1024 * 1024, power_limit_mw=None,
                compute_capability=spec.compute_capability, driver_version="simulated", cuda_version=None,
                simulated=True))
    return tuple(gpus)
