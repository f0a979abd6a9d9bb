"""Execution-layer figures, printed as JSON.

- submit → first log line for a local image through DockerExecutor (median/p90 over N runs),
  beside a bare ``docker run --rm IMAGE echo`` (the CLI) for comparison;
- the meter's CPU cost per running job: process CPU seconds per metered "minute", measured
  over a short interval with many concurrently metered jobs.

Usage: .venv/bin/python bench/execution.py [--runs 20] [--jobs 50] [--minutes 5]
Needs a Docker engine; builds the busybox test image if missing.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from _common import pct
from docker_fixtures import ensure_test_image

from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy
from dgpu.node.adapters.store import Store
from dgpu.node.ports.execution import JobSpec, ResourceLimits
from dgpu.node.services.meter import Meter


async def first_log_latency(image: str, runs: int, root: Path) -> list[float]:
    ex = await DockerExecutor.connect(DockerPolicy(workspace_root=root / "ws", instance="bench"))
    out = []
    for _ in range(runs):
        spec = JobSpec(job_id=secrets.token_hex(8), rental_id="b" * 16, image=image,
                       command=("echo", "hello"))
        t0 = time.perf_counter()
        handle = await ex.start(spec, ResourceLimits(time_limit_s=30))
        logs = handle.logs()
        await logs.__anext__()
        out.append(time.perf_counter() - t0)
        await logs.aclose()
        await handle.wait()
        await handle.cleanup()
    await ex.close()
    return out


def bare_docker_run(image: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", image, "echo", "hello"], check=True,
                       capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


async def meter_cpu(jobs: int, minutes: int, interval: float, root: Path) -> dict[str, float]:
    store = await Store.open(root / "meter.db")
    meter = Meter(store, None, interval_s=interval, samples_per_interval=4)
    ids = [secrets.token_hex(8) for _ in range(jobs)]
    for job_id in ids:
        await store.add_job(job_id, "r" * 16, "docker", {})
    cpu0 = time.process_time()
    started = time.time()
    with trio.move_on_after(minutes * interval + interval / 2):
        async with trio.open_nursery() as nursery:
            for job_id in ids:
                nursery.start_soon(meter.meter_job, job_id, started)
    cpu = time.process_time() - cpu0
    recorded = sum([len(await store.minutes(j)) for j in ids])
    await store.close()
    return {
        "jobs": jobs,
        "interval_s": interval,
        "minutes_recorded": recorded,
        "cpu_seconds_total": round(cpu, 4),
        "cpu_seconds_per_metered_minute": round(cpu / max(1, recorded), 6),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    image = ensure_test_image(docker.from_env())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ours = await first_log_latency(image, args.runs, root)
        bare = bare_docker_run(image, args.runs)
        meter = await meter_cpu(args.jobs, args.minutes, args.interval, root)
    print(json.dumps({
        "submit_to_first_log_s": {"median": round(statistics.median(ours), 4),
                                  "p90": round(pct(ours, 0.9), 4), "runs": len(ours)},
        "bare_docker_run_s": {"median": round(statistics.median(bare), 4),
                              "p90": round(pct(bare, 0.9), 4), "runs": len(bare)},
        "meter": meter,
    }, indent=2))


if __name__ == "__main__":
    trio.run(main)
