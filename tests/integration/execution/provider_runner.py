"""A minimal provider daemon for the crash-restart test.

``provider_runner.py DB WORKSPACE INSTANCE IMAGE INTERVAL start JOB_ID SECONDS``: accept and
run one Docker job that prints a line a second for SECONDS seconds, metering INTERVAL-second
"minutes". ``... resume``: reconcile (re-attach) and wait for the re-attached jobs to end.
Prints one JSON line per event so the test can follow it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy
from dgpu.node.adapters.store import Store
from dgpu.node.ports.execution import JobSpec, ResourceLimits
from dgpu.node.services.jobs import JobService
from dgpu.node.services.meter import Meter


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def main(argv: list[str]) -> None:
    db, workspace, instance, image, interval, mode = argv[:6]
    store = await Store.open(db)
    executor = await DockerExecutor.connect(
        DockerPolicy(workspace_root=Path(workspace), instance=instance)
    )
    meter = Meter(store, None, interval_s=float(interval), samples_per_interval=1)

    async def on_minute(minute: object) -> None:
        emit(event="minute", index=getattr(minute, "minute_index", None))

    service = JobService(store, {"docker": executor}, meter, stop_grace_s=1)
    if mode == "start":
        job_id, seconds = argv[6], int(argv[7])
        spec = JobSpec(
            job_id=job_id,
            rental_id="ab" * 8,
            image=image,
            command=("sh", "-c", f"for i in $(seq 1 {seconds}); do echo $i; sleep 1; done"),
            limits=ResourceLimits(memory_bytes=64 * 1024 * 1024, time_limit_s=120),
        )
        await service.accept(spec, "docker")
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
    await executor.close()


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
