"""GPU inventory and per-minute samples through NVML (``nvidia-ml-py``, import ``pynvml``).

Both classes implement ``dgpu.node.ports.gpu.GpuSource``. Rules: no NVIDIA library or no GPU is a
normal state, not an error: :meth:`NvmlGpus.inventory` then returns an empty ``GpuScan`` whose
``message`` says why, and the node offers no GPUs. A simulated inventory
(:class:`SimulatedGpus`) exists only on a development network and every record it makes has
``simulated=True``. NVML calls block, so they run in a worker thread behind a limiter of
one (NVML is process-global state; one caller at a time keeps init/shutdown simple).

The NVML module is injected (``nvml=``) so unit tests can pass ``FakeNvmlForTests``; the real
module is used everywhere else.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Sequence
from typing import Any

import trio

from dgpu.node.ports.gpu import GpuInfo, GpuSample, GpuScan, simulated_gpus
from dgpu.protocol.messages import GpuSpec

__all__ = ["NvmlGpus", "SimulatedGpus", "normalize_gpu_model"]

_TEMP_GPU = 0  # NVML_TEMPERATURE_GPU
_VENDOR_WORDS = ("nvidia", "geforce", "tesla", "quadro", "apple", "amd", "radeon")
_DATACENTER = re.compile(
    r"^(A100|H100|H200|H20|B100|B200|GH200|A800|H800|A40|A30|A16|A10G?|A2|L40S?|L4|V100|P100|T4)"
    r"(?=$|[-\s])"
)
_GEFORCE = re.compile(r"^(RTX|GTX)\s*(\d{3,4})(\s*(Ti SUPER|Ti|SUPER))?(?=$|\s)", re.IGNORECASE)
_APPLE = re.compile(r"^(M\d+)\s*(Ultra|Max|Pro)?(?=$|\s)", re.IGNORECASE)


def normalize_gpu_model(raw: str) -> str:
    """Map an NVML/vendor model name to the pricing table's key.

    "NVIDIA GeForce RTX 4090" → "RTX 4090"; "NVIDIA A100-SXM4-80GB" → "A100";
    "NVIDIA H100 80GB HBM3" → "H100"; "Apple M3 Ultra" → "M3 Ultra". A model the patterns
    do not know keeps a cleaned name (vendor words dropped, whitespace collapsed).
    """
    words = raw.replace("_", " ").split()
    while words and words[0].lower() in _VENDOR_WORDS:
        words.pop(0)
    cleaned = " ".join(words).strip()
    if not cleaned:
        return raw.strip() or "unknown"
    if m := _DATACENTER.match(cleaned.upper()):
        return m.group(1)
    if m := _GEFORCE.match(cleaned):
        family = m.group(1).upper()
        suffix = m.group(4)
        name = f"{family} {m.group(2)}"
        if suffix:
            name += " " + ("Ti" if suffix.lower() == "ti" else suffix.upper().replace("TI", "Ti"))
        rest = cleaned[m.end() :].strip()
        return f"{name} {rest}".strip() if rest.lower().startswith("laptop") else name
    if m := _APPLE.match(cleaned):
        tier = m.group(2)
        return f"{m.group(1).upper()} {tier.capitalize()}" if tier else m.group(1).upper()
    return cleaned


class SimulatedGpus:
    """A development network's GPUs, declared with ``--simulated-gpu``: marked ``simulated`` in
    every record (and so in every offer), with stable fake UUIDs (``ports.gpu.simulated_gpus``).
    Never sampled: a simulated GPU has no utilisation to report; inventing one would be a fake
    metric."""

    def __init__(self, specs: Sequence[GpuSpec], *, owner: str) -> None:
        gpus = simulated_gpus(specs, owner=owner)
        self._scan = GpuScan(gpus, available=False,
                             message=f"SIMULATED inventory ({len(gpus)} GPUs; development networks only)")

    async def inventory(self) -> GpuScan:
        return self._scan

    async def sample(self, uuids: Sequence[str]) -> list[GpuSample]:
        del uuids
        return []


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _load_real_nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlGpus:
    """The NVML adapter. Construct once per daemon; methods are safe to call concurrently."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml: Any = nvml if nvml is not None else _load_real_nvml()
        # one NVML caller at a time: init/shutdown are process-global
        self._limiter = trio.CapacityLimiter(1)

    async def inventory(self) -> GpuScan:
        """Every GPU NVML reports; an empty inventory with a clear message when none."""
        return await trio.to_thread.run_sync(self.inventory_sync, limiter=self._limiter)

    async def sample(self, uuids: Sequence[str]) -> list[GpuSample]:
        """One sample per GPU in ``uuids`` (those NVML cannot find are left out)."""
        if not uuids:
            return []
        return await trio.to_thread.run_sync(self.sample_sync, list(uuids), limiter=self._limiter)

    # --- blocking halves (worker thread) -----------------------------------------------

    def inventory_sync(self) -> GpuScan:
        nv = self._nvml
        if nv is None:
            return GpuScan((), False, "no GPUs: the nvidia-ml-py (pynvml) package is missing")
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            return GpuScan((), False, f"no GPUs: NVML could not start ({_describe(nv, exc)})")
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
            cuda = _optional(nv, lambda: _cuda_text(nv.nvmlSystemGetCudaDriverVersion_v2()))
            count = nv.nvmlDeviceGetCount()
            gpus = []
            for i in range(count):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                raw = _text(nv.nvmlDeviceGetName(h))
                cc = _optional(nv, lambda h=h: nv.nvmlDeviceGetCudaComputeCapability(h))
                gpus.append(
                    GpuInfo(
                        index=i,
                        uuid=_text(nv.nvmlDeviceGetUUID(h)),
                        model=normalize_gpu_model(raw),
                        raw_name=raw,
                        memory_total_bytes=int(nv.nvmlDeviceGetMemoryInfo(h).total),
                        power_limit_mw=_optional(
                            nv, lambda h=h: int(nv.nvmlDeviceGetEnforcedPowerLimit(h))
                        ),
                        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
                        driver_version=driver,
                        cuda_version=cuda,
                        simulated=False,
                    )
                )
        except nv.NVMLError as exc:
            return GpuScan((), False, f"no GPUs: NVML query failed ({_describe(nv, exc)})")
        finally:
            _shutdown(nv)
        if not gpus:
            return GpuScan((), True, f"no GPUs: NVML (driver {driver}) reports none")
        names = ", ".join(g.model for g in gpus)
        return GpuScan(tuple(gpus), True, f"{len(gpus)} GPU(s): {names} (driver {driver})")

    def sample_sync(self, uuids: list[str]) -> list[GpuSample]:
        nv = self._nvml
        if nv is None:
            return []
        try:
            nv.nvmlInit()
        except nv.NVMLError:
            return []
        try:
            out = []
            for uuid in uuids:
                try:
                    h = nv.nvmlDeviceGetHandleByUUID(uuid.encode())
                except nv.NVMLError:
                    continue
                out.append(
                    GpuSample(
                        uuid=uuid,
                        at=time.time(),
                        utilization_pct=_optional(
                            nv, lambda h=h: int(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                        ),
                        memory_used_bytes=_optional(
                            nv, lambda h=h: int(nv.nvmlDeviceGetMemoryInfo(h).used)
                        ),
                        power_draw_mw=_optional(nv, lambda h=h: int(nv.nvmlDeviceGetPowerUsage(h))),
                        temperature_c=_optional(
                            nv, lambda h=h: int(nv.nvmlDeviceGetTemperature(h, _TEMP_GPU))
                        ),
                    )
                )
            return out
        finally:
            _shutdown(nv)


def _cuda_text(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _optional(nv: Any, fn: Any) -> Any:
    """``fn()``, or None when NVML says the field is not supported / not available."""
    try:
        return fn()
    except nv.NVMLError:
        return None


def _shutdown(nv: Any) -> None:
    with contextlib.suppress(nv.NVMLError):
        nv.nvmlShutdown()


def _describe(nv: Any, exc: BaseException) -> str:
    lib_missing = getattr(nv, "NVMLError_LibraryNotFound", None)
    if lib_missing is not None and isinstance(exc, lib_missing):
        return "the NVIDIA driver library libnvidia-ml.so is not installed"
    driver_missing = getattr(nv, "NVMLError_DriverNotLoaded", None)
    if driver_missing is not None and isinstance(exc, driver_missing):
        return "the NVIDIA kernel driver is not loaded"
    return str(exc)
