"""The provider's GPUs as an operator sees them: the latest sample of every offered GPU, and
whether a lease holds it (read by ``/metrics`` at scrape time).

Theory of operation: :meth:`GpuMonitor.run` samples every GPU of the inventory through the GPU
port once at start (so the first scrape already has them) and then every ``interval_s``; it keeps
only the latest sample per GPU (bounded by the inventory). A GPU the source cannot sample
(simulated GPUs, an NVML field not supported) has no sample: its readings are absent, never
invented. Leases are not copied: :meth:`readings` asks the inventory, which owns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from dgpu.node.ports.gpu import GpuSample, GpuSampler
from dgpu.node.services.inventory import Inventory

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["GpuMonitor", "GpuReading"]


@dataclass(frozen=True, slots=True)
class GpuReading:
    uuid: str
    model: str
    leased: bool
    #: the latest sample; None before the first or when the source cannot sample this GPU
    sample: GpuSample | None


class GpuMonitor:
    def __init__(self, inventory: Inventory, sampler: GpuSampler, *, interval_s: float = 15.0) -> None:
        if interval_s <= 0:
            raise ValueError("interval must be positive")
        self.inventory = inventory
        self.sampler = sampler
        self.interval_s = interval_s
        self._latest: dict[str, GpuSample] = {}

    async def sample_once(self) -> None:
        uuids = [g.uuid for g in self.inventory.gpus]
        samples = {s.uuid: s for s in await self.sampler.sample(uuids)}
        self._latest = {u: samples[u] for u in uuids if u in samples}

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample now, report started, then sample every ``interval_s`` until cancelled."""
        await self.sample_once()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.sample_once()

    def readings(self) -> list[GpuReading]:
        free = {g.uuid for g in self.inventory.free()}
        return [GpuReading(g.uuid, g.model, g.uuid not in free, self._latest.get(g.uuid))
                for g in self.inventory.gpus]
