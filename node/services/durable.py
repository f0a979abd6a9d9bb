"""Durable jobs behind the job stream: the job service (SQLite, meter, reconcile) as an executor.

The job stream (``job_stream.JobServer``) drives an executor: ``start`` → handle with
``logs()``, ``wait()``, ``stop()``, ``cleanup()``. :class:`DurableExecutor` gives it exactly that
shape, but runs every job through :class:`~dgpu.node.services.jobs.JobService`: each lifecycle
transition is persisted, every minute is metered once, and a restarted daemon reconciles the
containers it finds. Its handles also offer ``usage(agreement_id)``: the metered minutes as
protocol ``UsageReceipt`` messages, which the job stream signs and sends to the renter.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import trio

from dgpu.node.ports.execution import ExitReason, ExitStatus, JobSpec, LogChunk, ResourceLimits
from dgpu.node.ports.store import JobStore, UsageMinute
from dgpu.node.services.jobs import JobService
from dgpu.node.services.meter import build_usage_receipts
from dgpu.protocol.messages import UsageReceipt

__all__ = ["DurableExecutor", "DurableHandle"]

log = logging.getLogger(__name__)

#: log chunks buffered between the job and a slow renter stream; when full the job's log
#: reader waits (backpressure), it never drops a line
LOG_BUFFER = 256
#: metered minutes waiting to be sent; one per minute, so this is hours of slack
USAGE_BUFFER = 64


class DurableHandle:
    """One job run through the job service; the job stream's view of it."""

    def __init__(self, service: JobService, store: JobStore, job_id: str) -> None:
        self._service = service
        self._store = store
        self.job_id = job_id
        self._logs_send, self._logs_recv = trio.open_memory_channel[LogChunk](LOG_BUFFER)
        self._usage_send, self._usage_recv = trio.open_memory_channel[UsageMinute](USAGE_BUFFER)
        self._done = trio.Event()
        self._status: ExitStatus | None = None

    async def _run(self) -> None:
        # The job stream stops reading when its renter goes away; the job itself runs on (the
        # stream decides whether to stop it), so a chunk or notice nobody reads is dropped here
        # rather than failing the job (and with it the node). Minutes stay in the store.
        async def on_log(job_id: str, chunk: LogChunk) -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await self._logs_send.send(chunk)

        async def on_minute(minute: UsageMinute) -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await self._usage_send.send(minute)

        try:
            self._status = await self._service.run(self.job_id, log_sink=on_log, minute_sink=on_minute)
        except Exception as exc:  # supervisor: the job ends with the reason, never a bare crash
            log.exception("job %s: the job service failed", self.job_id)
            self._status = ExitStatus(None, ExitReason.FAILED, f"the provider's job service failed: {exc!r}")
        finally:
            await self._logs_send.aclose()
            await self._usage_send.aclose()
            self._done.set()

    async def logs(self) -> AsyncIterator[LogChunk]:
        async with self._logs_recv:
            async for chunk in self._logs_recv:
                yield chunk

    async def usage(self, agreement_id: str) -> AsyncIterator[UsageReceipt]:
        """Each metered minute once, as an unsigned receipt, in minute order, none skipped.

        A notification says "the store has new minutes", not which one to send: every stored
        minute from the next unsent index goes out. So a minute whose notification was lost
        (the meter cancelled between storing it and notifying, as the job ends) still goes out,
        before any later one, and one last sweep after the job catches what came last."""
        next_index = 0

        async def unsent() -> list[UsageReceipt]:
            return await build_usage_receipts(self._store, self.job_id, agreement_id, from_index=next_index)

        async with self._usage_recv:
            async for _ in self._usage_recv:
                for receipt in await unsent():
                    next_index = receipt.minute_index + 1
                    yield receipt
        for receipt in await unsent():
            next_index = receipt.minute_index + 1
            yield receipt

    async def wait(self) -> ExitStatus:
        await self._done.wait()
        if self._status is None:  # run was cancelled (daemon shutdown): the job is left to reconcile
            return ExitStatus(None, ExitReason.FAILED, "the provider is shutting down")
        return self._status

    async def stop(self, grace_s: float = 10.0) -> None:
        del grace_s  # the job service applies its own stop grace period
        await self._service.cancel(self.job_id)

    async def cleanup(self) -> None:
        """Nothing: the job service removes the container and workspace itself."""


class DurableExecutor:
    """Runs jobs of one executor kind (``docker`` or ``script``) through the job service."""

    def __init__(self, service: JobService, store: JobStore, executor: str, nursery: trio.Nursery) -> None:
        self._service = service
        self._store = store
        self._executor = executor
        self._nursery = nursery

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> DurableHandle:
        """Persist the job (ACCEPTED) and start running it; raises what ``accept`` raises."""
        spec = replace(spec, limits=limits)
        await self._service.accept(spec, self._executor)
        handle = DurableHandle(self._service, self._store, spec.job_id)
        self._nursery.start_soon(handle._run)
        return handle

