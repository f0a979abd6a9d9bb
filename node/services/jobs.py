"""The job service: runs accepted jobs on an executor, persists every transition, meters
minutes, and reconciles with Docker after a daemon restart.

Theory of operation (one job)::

    accept(spec)            ACCEPTED   persisted with its spec
    run(job_id)             STARTING   executor.start (image check, workspace, container)
                            RUNNING    started_at persisted: the meter's origin
                            ... logs → log_sink, minutes → minute_sink, wait (time limit) ...
                            FINISHED | FAILED (non-zero, OOM, engine error)
                            | EXPIRED (time limit) | CANCELLED (cancel())
                            then outputs are collected and the container/scratch removed

If ``run`` is *cancelled* (daemon shutdown) the job is left RUNNING and its container keeps
going; :meth:`JobService.reconcile` on the next start re-attaches it (found by label),
finishes it if it exited meanwhile, or marks it FAILED if it vanished. The meter never
records a minute twice (see ``dgpu.node.services.meter``). Script jobs cannot be
re-attached: a RUNNING script job found at start is marked FAILED and whatever is left of its
processes (named by the token stored as its ``container_id``) is killed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from dgpu.node.errors import ExecutionError, JobSpecInvalid
from dgpu.node.ports.execution import (
    Executor,
    ExitReason,
    ExitStatus,
    JobHandle,
    JobSpec,
    LogChunk,
    ReapingExecutor,
    ReattachableExecutor,
    ResourceLimits,
)
from dgpu.node.ports.store import JobRecord, JobState, JobStore
from dgpu.node.services.meter import Meter, MinuteSink

if TYPE_CHECKING:
    from dgpu.protocol.messages import JobRequest

__all__ = [
    "Executor",
    "JobService",
    "LogSink",
    "ReconcileReport",
    "StatusSink",
    "job_spec_from_request",
]

LogSink = Callable[[str, LogChunk], Awaitable[None]]
StatusSink = Callable[[JobRecord], Awaitable[None]]

_FINAL_STATE = {
    ExitReason.FINISHED: JobState.FINISHED,
    ExitReason.FAILED: JobState.FAILED,
    ExitReason.OOM: JobState.FAILED,
    ExitReason.TIMEOUT: JobState.EXPIRED,
    ExitReason.CANCELLED: JobState.CANCELLED,
    ExitReason.OUTPUT_LIMIT: JobState.FAILED,
}
#: after the process exits, how long the log follower may take to deliver what is left
LOG_DRAIN_S = 10.0


@dataclass
class ReconcileReport:
    reattached: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  #: exited while the daemon was down
    failed: list[str] = field(default_factory=list)  #: vanished / not re-attachable
    removed_orphans: list[str] = field(default_factory=list)  #: container ids


def job_spec_from_request(
    request: JobRequest,
    *,
    job_id: str,
    rental_id: str,
    inputs: Mapping[str, Path],
    output_dir: Path | None,
    limits: ResourceLimits,
    gpu_uuids: tuple[str, ...] = (),
) -> JobSpec:
    """Build the executor's spec from the protocol's ``JobRequest``.

    ``inputs`` maps each ``InputRef.cid`` to the local file the blob layer fetched;
    ``limits`` are the provider's (their time limit is cut to ``max_minutes``).
    """
    files = {}
    for ref in request.inputs:
        if ref.cid not in inputs:
            raise JobSpecInvalid(f"input {ref.path!r} ({ref.cid}) was not fetched")
        files[ref.path] = inputs[ref.cid]
    time_limit = min(limits.time_limit_s, float(request.max_minutes) * 60.0)
    return JobSpec(
        job_id=job_id,
        rental_id=rental_id,
        command=tuple(request.command),
        image=request.image,
        script=request.script,
        env=dict(request.env),
        inputs=files,
        output_dir=output_dir,
        limits=ResourceLimits(
            memory_bytes=limits.memory_bytes,
            cpus=limits.cpus,
            pids=limits.pids,
            time_limit_s=time_limit,
            scratch_bytes=limits.scratch_bytes,
        ),
        network=request.egress,
        gpu_uuids=gpu_uuids,
    )


class JobService:
    """Owns job lifecycles. The network layer calls :meth:`accept`, :meth:`run`,
    :meth:`cancel`; the daemon calls :meth:`reconcile` once at start."""

    def __init__(
        self,
        store: JobStore,
        executors: Mapping[str, Executor],
        meter: Meter,
        *,
        stop_grace_s: float = 10.0,
        on_status: StatusSink | None = None,
    ) -> None:
        self._store = store
        self._executors = dict(executors)
        self._meter = meter
        self._grace = stop_grace_s
        self._on_status = on_status
        self._handles: dict[str, JobHandle] = {}

    async def _move(
        self,
        job_id: str,
        to: JobState,
        *,
        detail: str = "",
        container_id: str | None = None,
        started_at: float | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> JobRecord:
        record = await self._store.transition(
            job_id,
            to,
            detail=detail,
            container_id=container_id,
            started_at=started_at,
            exit_code=exit_code,
            reason=reason,
        )
        if self._on_status is not None:
            await self._on_status(record)
        return record

    async def accept(self, spec: JobSpec, executor: str) -> JobRecord:
        """Persist a new job (ACCEPTED). Raises JobSpecInvalid for an unknown executor."""
        if executor not in self._executors:
            raise JobSpecInvalid(f"no {executor!r} executor on this provider")
        record = await self._store.add_job(spec.job_id, spec.rental_id, executor, spec.to_json())
        if self._on_status is not None:
            await self._on_status(record)
        return record

    async def run(
        self,
        job_id: str,
        *,
        log_sink: LogSink | None = None,
        minute_sink: MinuteSink | None = None,
    ) -> ExitStatus:
        """Run an ACCEPTED job to its end and return how it ended (the final state is stored).

        An ExecutionError while starting ends the job FAILED (returned, not raised).
        Cancelling this call leaves a started job RUNNING for :meth:`reconcile`.
        """
        record = await self._store.get_job(job_id)
        spec = JobSpec.from_json(record.spec)
        executor = self._executors[record.executor]
        await self._move(job_id, JobState.STARTING)
        try:
            handle = await executor.start(spec, spec.limits)
        except ExecutionError as exc:
            await self._move(job_id, JobState.FAILED, detail=str(exc), reason="failed")
            return ExitStatus(None, ExitReason.FAILED, str(exc))
        container_id = getattr(handle, "container_id", None)
        started_at = float(getattr(handle, "started_at", time.time()))
        await self._move(
            job_id,
            JobState.RUNNING,
            container_id=container_id or f"pid:{getattr(handle, 'pid', 0)}",
            started_at=started_at,
        )
        return await self._supervise(handle, spec, started_at, log_sink, minute_sink)

    async def _supervise(
        self,
        handle: JobHandle,
        spec: JobSpec,
        started_at: float,
        log_sink: LogSink | None,
        minute_sink: MinuteSink | None,
    ) -> ExitStatus:
        job_id = spec.job_id
        self._handles[job_id] = handle
        try:
            async with trio.open_nursery() as nursery:
                meter_scope = trio.CancelScope()
                logs_done = trio.Event()

                async def meter() -> None:
                    with meter_scope:
                        await self._meter.meter_job(
                            job_id, started_at, spec.gpu_uuids, on_minute=minute_sink
                        )

                async def pump_logs() -> None:
                    try:
                        async for chunk in handle.logs():
                            if log_sink is not None:
                                await log_sink(job_id, chunk)
                    finally:
                        logs_done.set()

                nursery.start_soon(meter)
                nursery.start_soon(pump_logs)
                status = await handle.wait()
                ended_at = time.time()
                meter_scope.cancel()
                with trio.move_on_after(LOG_DRAIN_S):
                    await logs_done.wait()
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await self._meter.finish_job(job_id, started_at, ended_at, on_minute=minute_sink)
                await self._move(
                    job_id,
                    _FINAL_STATE[status.reason],
                    exit_code=status.exit_code,
                    reason=status.reason.value,
                    detail=status.detail,
                )
                await handle.cleanup()
            return status
        finally:
            self._handles.pop(job_id, None)

    async def cancel(self, job_id: str) -> bool:
        """Stop a running job (SIGTERM, grace, SIGKILL); ``run`` then ends it CANCELLED.
        A job not started yet is moved to CANCELLED directly. False if already ended."""
        handle = self._handles.get(job_id)
        if handle is not None:
            await handle.stop(self._grace)
            return True
        record = await self._store.get_job(job_id)
        if record.state is JobState.ACCEPTED:
            await self._move(job_id, JobState.CANCELLED, reason="cancelled")
            return True
        return False

    async def reconcile(
        self,
        nursery: trio.Nursery,
        *,
        log_sink: LogSink | None = None,
        minute_sink: MinuteSink | None = None,
    ) -> ReconcileReport:
        """Bring stored state and the engine back in line after a restart.

        Running containers are re-attached (supervised in ``nursery``), containers that
        exited meanwhile are finished (minutes up to their exit), vanished ones FAILED,
        containers of ended/unknown jobs removed.
        """
        report = ReconcileReport()
        docker = self._executors.get("docker")
        containers = {}
        if docker is not None:
            containers = await _docker(docker).list_jobs()
        active = await self._store.jobs_in([JobState.STARTING, JobState.RUNNING])
        active_ids = {r.job_id for r in active}
        for record in active:
            spec = JobSpec.from_json(record.spec)
            info = containers.get(record.job_id) if record.executor == "docker" else None
            if info is None:
                await self._fail_vanished(record, report)
                continue
            if record.state is JobState.STARTING:
                if not info.running:
                    await self._fail_vanished(record, report)
                    await _docker(docker).remove(info.container_id)
                    continue
                started = info.started_at or time.time()
                await self._move(
                    record.job_id,
                    JobState.RUNNING,
                    container_id=info.container_id,
                    started_at=started,
                    detail="re-attached after restart",
                )
                record = await self._store.get_job(record.job_id)
            started_at = record.started_at or info.started_at or time.time()
            handle = await _docker(docker).reattach(spec, spec.limits, info)
            if info.running:
                report.reattached.append(record.job_id)
                nursery.start_soon(
                    self._supervise, handle, spec, started_at, log_sink, minute_sink
                )
            else:
                # exited while we were down: bill up to its exit, not up to now
                report.finished.append(record.job_id)
                status = await handle.wait()
                ended_at = info.finished_at or time.time()
                await self._meter.finish_job(
                    record.job_id, started_at, ended_at, on_minute=minute_sink
                )
                await self._move(
                    record.job_id,
                    _FINAL_STATE[status.reason],
                    exit_code=status.exit_code,
                    reason=status.reason.value,
                    detail=status.detail or "exited while the daemon was down",
                )
                await handle.cleanup()
        for job_id, info in containers.items():
            if job_id not in active_ids:
                await _docker(docker).remove(info.container_id)
                report.removed_orphans.append(info.container_id)
        return report

    async def _fail_vanished(self, record: JobRecord, report: ReconcileReport) -> None:
        why = "the container vanished while the daemon was down"
        if record.executor != "docker":
            why = "script jobs cannot be re-attached after a daemon restart"
            executor = self._executors.get(record.executor)
            if isinstance(executor, ReapingExecutor) and record.container_id:
                killed = await executor.reap(record.container_id)  # no orphan runs on, unpaid
                why += f"; its {killed} leftover process(es) were killed" if killed else "; nothing of it was left"
        await self._move(record.job_id, JobState.FAILED, reason="failed", detail=why)
        report.failed.append(record.job_id)


def _docker(executor: Executor | None) -> ReattachableExecutor:
    if not isinstance(executor, ReattachableExecutor):
        raise TypeError("the 'docker' executor must be able to re-attach its containers")
    return executor
