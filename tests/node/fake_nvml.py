"""The NVML test double, injected at the adapter boundary: ``NvmlGpus(nvml=FakeNvml())``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml

FakeGpu = tuple[str, str, int, int | None, tuple[int, int]]

#: two "H100 80GB" GPUs with a 700 W power limit (a provider with no GPU flags offers both)
TWO_H100: list[FakeGpu] = [
    ("NVIDIA H100 80GB HBM3", "GPU-11111111-aaaa", 80 * 1024**3, 700_000, (9, 0)),
    ("NVIDIA H100 80GB HBM3", "GPU-22222222-bbbb", 80 * 1024**3, 700_000, (9, 0)),
]


class FakeNvml:
    """The NVML test double: the pynvml calls ``NvmlGpus`` makes, answered from ``gpus``
    (name, UUID, memory bytes, power limit mW or None = unsupported, compute capability).
    Default: an RTX 4090 and an H100 whose power limit is unsupported."""

    NVMLError = pynvml.NVMLError
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, fail_init: bool = False, gpus: list[FakeGpu] | None = None) -> None:
        self.fail_init = fail_init
        self.inits = 0
        self.shutdowns = 0
        self.sampled: list[str] = []
        self.gpus = gpus if gpus is not None else [
            ("NVIDIA GeForce RTX 4090", "GPU-aaaa", 24 * 1024**3, 450_000, (8, 9)),
            ("NVIDIA H100 80GB HBM3", "GPU-bbbb", 80 * 1024**3, None, (9, 0)),
        ]

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes) -> int:
        for i, g in enumerate(self.gpus):
            if g[1].encode() == uuid:
                return i
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.gpus[h][0].encode()

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self.gpus[h][1]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=self.gpus[h][2], used=1024**3)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        if self.gpus[h][3] is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(self.gpus[h][3])

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return self.gpus[h][4]

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self.sampled.append(self.gpus[h][1])
        return SimpleNamespace(gpu=37)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 200_000

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 61
