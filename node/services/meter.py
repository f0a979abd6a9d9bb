"""The per-minute usage meter: the data billing uses.

Theory of operation: a job's minutes are numbered from its ``started_at`` (wall clock,
persisted with the job): minute ``i`` covers ``[started_at + i·T, started_at + (i+1)·T)``
where ``T`` is the interval (60 s; shorter in tests). :meth:`Meter.meter_job` records each
minute when it completes, with the GPU samples taken during it (averaged), until cancelled;
:meth:`Meter.finish_job` records the last, partial minute when the job ends. Both start by
looking at what the store already holds, so after a daemon restart:

- minutes recorded before the crash are never recorded again (the store's
  ``UNIQUE(job_id, minute_index)`` makes that true even if this code were wrong), and
- minutes that completed while the daemon was down are *backfilled* (``backfilled=True``,
  no samples) only when the job was still running (re-attached) or ended while down.

:func:`build_usage_receipts` turns stored minutes into the protocol's ``UsageReceipt``
messages that the provider signs and sends to the renter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from dgpu.node.ports.gpu import GpuSample, GpuSampler
from dgpu.node.ports.metrics import MeterObserver
from dgpu.node.ports.store import JobStore, UsageMinute
from dgpu.protocol.messages import GpuSample as WireGpuSample
from dgpu.protocol.messages import UsageReceipt

__all__ = ["Meter", "MinuteSink", "build_usage_receipts"]

MinuteSink = Callable[[UsageMinute], Awaitable[None]]


class Meter:
    """Records minutes for running jobs. One instance per daemon; stateless per job."""

    def __init__(
        self,
        store: JobStore,
        gpus: GpuSampler | None = None,
        *,
        interval_s: float = 60.0,
        samples_per_interval: int = 4,
        clock: Callable[[], float] = time.time,
        observer: MeterObserver | None = None,
    ) -> None:
        if interval_s <= 0 or samples_per_interval < 1:
            raise ValueError("interval and samples must be positive")
        self._store = store
        self._gpus = gpus
        self.interval_s = interval_s
        self._samples = samples_per_interval
        self._clock = clock
        self._observer = observer

    def minute_of(self, started_at: float, at: float) -> int:
        """The index of the minute that contains ``at`` (may be negative before the start)."""
        return math.floor((at - started_at) / self.interval_s)

    async def _next_index(self, job_id: str) -> int:
        last = await self._store.last_minute_index(job_id)
        return 0 if last is None else last + 1

    async def _record(
        self,
        job_id: str,
        index: int,
        seconds: float,
        samples: list[dict[str, Any]],
        *,
        backfilled: bool,
        sink: MinuteSink | None,
    ) -> None:
        new = await self._store.record_minute(
            job_id, index, seconds, samples, backfilled=backfilled
        )
        if new and self._observer is not None:
            self._observer.minute_metered(job_id)
        if new and sink is not None:
            minutes = await self._store.minutes(job_id, from_index=index)
            await sink(minutes[0])

    async def meter_job(
        self,
        job_id: str,
        started_at: float,
        gpu_uuids: Sequence[str] = (),
        *,
        on_minute: MinuteSink | None = None,
    ) -> None:
        """Record every completed minute of a running job; runs until cancelled.

        Minutes that completed before this call and are not stored are backfilled first.
        Cancellation leaves every completed minute recorded and no partial one.
        """
        index = await self._next_index(job_id)
        completed = self.minute_of(started_at, self._clock())
        while index < completed:
            await self._record(
                job_id, index, self.interval_s, [], backfilled=True, sink=on_minute
            )
            index += 1
        while True:
            end = started_at + (index + 1) * self.interval_s
            samples: list[GpuSample] = []
            for k in range(1, self._samples + 1):
                at = started_at + index * self.interval_s + k * self.interval_s / self._samples
                await trio.sleep(max(0.0, at - self._clock()))
                if self._gpus is not None and gpu_uuids:
                    samples += await self._gpus.sample(gpu_uuids)
            await trio.sleep(max(0.0, end - self._clock()))
            await self._record(
                job_id, index, self.interval_s, _average(samples), backfilled=False, sink=on_minute
            )
            index += 1

    async def finish_job(
        self,
        job_id: str,
        started_at: float,
        ended_at: float,
        *,
        on_minute: MinuteSink | None = None,
    ) -> None:
        """Record what is missing up to ``ended_at``: complete minutes (backfilled) and the
        final partial minute (its ``wall_seconds`` < the interval)."""
        index = await self._next_index(job_id)
        while True:
            begin = started_at + index * self.interval_s
            seconds = min(self.interval_s, ended_at - begin)
            if seconds <= 0:
                return
            await self._record(job_id, index, seconds, [], backfilled=True, sink=on_minute)
            index += 1


def _average(samples: list[GpuSample]) -> list[dict[str, Any]]:
    """One averaged record per GPU (None fields stay None)."""
    by_gpu: dict[str, list[GpuSample]] = {}
    for s in samples:
        by_gpu.setdefault(s.uuid, []).append(s)
    out = []
    for uuid, group in by_gpu.items():

        def avg(values: list[int | None]) -> int | None:
            known = [v for v in values if v is not None]
            return round(sum(known) / len(known)) if known else None

        out.append(
            {
                "uuid": uuid,
                "at": group[-1].at,
                "n": len(group),
                "utilization_pct": avg([g.utilization_pct for g in group]),
                "memory_used_bytes": avg([g.memory_used_bytes for g in group]),
                "power_draw_mw": avg([g.power_draw_mw for g in group]),
                "temperature_c": avg([g.temperature_c for g in group]),
            }
        )
    return out


def _wire_sample(d: dict[str, Any]) -> WireGpuSample:
    return WireGpuSample(
        uuid=d["uuid"],
        utilization_pct=min(100, max(0, d.get("utilization_pct") or 0)),
        memory_used_mib=(d.get("memory_used_bytes") or 0) // (1024 * 1024),
        power_mw=d.get("power_draw_mw") or 0,
        temperature_c=d.get("temperature_c") or 0,
    )


async def build_usage_receipts(
    store: JobStore, job_id: str, agreement_id: str, *, from_index: int = 0
) -> list[UsageReceipt]:
    """The ``UsageReceipt`` messages (unsigned) for every stored minute ≥ ``from_index``.

    ``minutes_total`` counts the stored minutes up to and including each one; the provider
    signs each receipt with its envelope before sending it to the renter.
    """
    # one read: a minute recorded between two reads (the meter catching up after the process was
    # frozen records several at once) would shift every count after it
    stored = await store.minutes(job_id)
    earlier = sum(1 for m in stored if m.minute_index < from_index)
    receipts = []
    for n, m in enumerate((m for m in stored if m.minute_index >= from_index), start=earlier + 1):
        receipts.append(
            UsageReceipt(
                job_id=job_id,
                agreement_id=agreement_id,
                minute_index=m.minute_index,
                minutes_total=n,
                at=int(m.recorded_at),
                gpus=tuple(_wire_sample(s) for s in m.samples),
            )
        )
    return receipts
