"""A minimal provider daemon for the crash-restart test.

``provider_runner.py DB WORKSPACE INSTANCE IMAGE INTERVAL start JOB_ID SECONDS``: accept and
run one Docker job that prints a line a second for SECONDS seconds, metering INTERVAL-second
"minutes". ``... resume``: reconcile (re-attach) and wait for the re-attached jobs to end.
IMAGE ``script``: a script job instead (the script executor; INSTANCE is put on its command line,
so the test can find its processes).
Prints one JSON line per event so the test can follow it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy
from dgpu.node.adapters.script_executor import ScriptExecutor, ScriptPolicy
from dgpu.node.adapters.store import Store
from dgpu.node.ports.execution import JobSpec, ResourceLimits
from dgpu.node.services.jobs import JobService
from dgpu.node.services.meter import Meter


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def main(argv: list[str]) -> None:
    db, workspace, instance, image, interval, mode = argv[:6]
    store = await Store.open(db)
    kind = "script" if image == "script" else "docker"
    executor: DockerExecutor | ScriptExecutor
    if kind == "script":
        executor = await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=Path(workspace)))
    else:
        executor = await DockerExecutor.connect(DockerPolicy(workspace_root=Path(workspace), instance=instance))
    meter = Meter(store, None, interval_s=float(interval), samples_per_interval=1)

    async def on_minute(minute: object) -> None:
        emit(event="minute", index=getattr(minute, "minute_index", None))

    service = JobService(store, {kind: executor}, meter, stop_grace_s=1)
    if mode == "start":
        job_id, seconds = argv[6], int(argv[7])
        loop = f"for i in $(seq 1 {seconds}); do echo $i; sleep 1; done"
        limits = ResourceLimits(memory_bytes=256 * 1024 * 1024, time_limit_s=120)
        if kind == "script":
            spec = JobSpec(job_id=job_id, rental_id="ab" * 8, script=loop, command=(instance,), limits=limits)
        else:
            spec = JobSpec(job_id=job_id, rental_id="ab" * 8, image=image, command=("sh", "-c", loop), limits=limits)
        await service.accept(spec, kind)
        emit(event="accepted", job_id=job_id)
        status = await service.run(job_id, minute_sink=on_minute)
        emit(event="ended", reason=status.reason.value)
    else:
        async with trio.open_nursery() as nursery:
            report = await service.reconcile(nursery, minute_sink=on_minute)
            emit(
                event="reconciled",
                reattached=report.reattached,
                failed=report.failed,
                finished=report.finished,
            )
        emit(event="ended")
    await store.close()
    if isinstance(executor, DockerExecutor):
        await executor.close()


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
