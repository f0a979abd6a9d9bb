"""A provider daemon killed with SIGKILL mid-job is restarted: the job is re-attached (or
marked failed when its container vanished) and no minute is counted twice."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import docker
import pytest
import trio

pytestmark = [pytest.mark.docker, pytest.mark.integration]

RUNNER = Path(__file__).with_name("provider_runner.py")
INTERVAL = 1.0  # seconds per metered "minute" in this test


def minutes(db: Path, job_id: str) -> list[tuple[int, float, float, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT minute_index, wall_seconds, recorded_at, backfilled FROM usage_minutes "
            "WHERE job_id = ? ORDER BY minute_index", (job_id,)
        ).fetchall()
    finally:
        conn.close()


def job_row(db: Path, job_id: str) -> tuple[str, str]:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT state, detail FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return (row[0], row[1])
    finally:
        conn.close()


async def start_runner(args: list[str]) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, str(RUNNER), *args], stdout=subprocess.PIPE
    )


async def read_events(proc: trio.Process, until: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    buf = b""
    assert proc.stdout is not None
    with trio.fail_after(90):
        while True:
            data = await proc.stdout.receive_some(4096)
            if not data:
                return events
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                event = json.loads(line)
                events.append(event)
                if event["event"] == until:
                    return events


async def kill_mid_job(tmp_path: Path, image: str, instance: str, seconds: int) -> tuple[Path, str]:
    db = tmp_path / "state.db"
    job_id = secrets.token_hex(8)
    base = [str(db), str(tmp_path / "ws"), instance, image, str(INTERVAL)]
    proc = await start_runner([*base, "start", job_id, str(seconds)])
    seen = 0
    buf = b""
    assert proc.stdout is not None
    with trio.fail_after(60):
        while seen < 2:  # two metered minutes, then the crash
            buf += await proc.stdout.receive_some(4096)
            seen = buf.count(b'"minute"')
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    return db, job_id


async def test_sigkill_then_reattach_counts_each_minute_once(
    busybox_image: str, tmp_path: Path, instance: str, docker_engine: docker.DockerClient
) -> None:
    # long enough that the job still runs when the restarted daemon reconciles: starting a
    # Python process that imports the Docker SDK takes seconds on a loaded machine (6 s was
    # too short there: the job had finished, so nothing was re-attached)
    job_seconds = 20
    db, job_id = await kill_mid_job(tmp_path, busybox_image, instance, seconds=job_seconds)
    before = minutes(db, job_id)
    assert job_row(db, job_id)[0] == "running"
    [container] = docker_engine.containers.list(filters={"label": f"dgpu.job_id={job_id}"})
    assert container.status == "running"  # the job outlived its daemon

    await trio.sleep(1.5)  # the daemon stays down across at least one minute boundary
    base = [str(db), str(tmp_path / "ws"), instance, busybox_image, str(INTERVAL)]
    proc = await start_runner([*base, "resume"])
    events = await read_events(proc, until="ended")
    await proc.wait()

    reconciled = next(e for e in events if e["event"] == "reconciled")
    assert reconciled["reattached"] == [job_id]
    after = minutes(db, job_id)
    indexes = [m[0] for m in after]
    assert indexes == list(range(len(after)))  # contiguous, no index twice
    assert after[: len(before)] == before  # minutes recorded before the crash untouched
    # never more metered time than the job ran (its seconds of output, plus start/exit slack)
    assert sum(m[1] for m in after) <= job_seconds + 2 * INTERVAL
    assert job_row(db, job_id)[0] == "finished"
    assert docker_engine.containers.list(all=True, filters={"label": f"dgpu.job_id={job_id}"}) == []


async def test_sigkill_then_vanished_container_is_failed(
    busybox_image: str, tmp_path: Path, instance: str, docker_engine: docker.DockerClient
) -> None:
    db, job_id = await kill_mid_job(tmp_path, busybox_image, instance, seconds=30)
    before = minutes(db, job_id)
    for c in docker_engine.containers.list(all=True, filters={"label": f"dgpu.job_id={job_id}"}):
        c.remove(force=True)  # the container disappears while the daemon is down
    base = [str(db), str(tmp_path / "ws"), instance, busybox_image, str(INTERVAL)]
    proc = await start_runner([*base, "resume"])
    events = await read_events(proc, until="ended")
    await proc.wait()
    reconciled = next(e for e in events if e["event"] == "reconciled")
    assert reconciled["failed"] == [job_id]
    state, detail = job_row(db, job_id)
    assert state == "failed" and "vanished" in detail
    assert minutes(db, job_id) == before  # nothing billed for the unknown downtime


def job_processes(marker: str) -> list[int]:
    """Host processes whose command line names ``marker`` (the script job's argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline.split(b"\0") and b"provider_runner.py" not in cmdline:
                found.append(int(entry.name))
    return found


async def test_sigkill_mid_script_job_leaves_no_job_process_after_restart(tmp_path: Path) -> None:
    # script jobs run as their own uid under the runner's folders: every parent must be traversable
    os.chmod(tmp_path, 0o711)
    marker = "dgpu-orphan-" + secrets.token_hex(4)  # the job's argument: finds its processes
    db, job_id = await kill_mid_job(tmp_path, "script", marker, seconds=60)
    assert job_row(db, job_id)[0] == "running"
    base = [str(db), str(tmp_path / "ws"), marker, "script", str(INTERVAL)]
    proc = await start_runner([*base, "resume"])
    events = await read_events(proc, until="ended")
    await proc.wait()
    reconciled = next(e for e in events if e["event"] == "reconciled")
    assert reconciled["failed"] == [job_id]
    state, detail = job_row(db, job_id)
    assert state == "failed" and "re-attached" in detail
    assert job_processes(marker) == []  # nothing of the job runs on, unpaid
