"""A Docker job cannot fill the provider's disk: /outputs, /tmp and image volumes are capped,
and a job that fills /outputs is stopped with ExitReason.OUTPUT_LIMIT (real engine)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest
import trio

from dgpu.node.adapters.docker_executor import DockerExecutor, DockerJobHandle, DockerPolicy
from dgpu.node.ports.execution import ExitReason, ExitStatus, JobSpec, ResourceLimits

pytestmark = [pytest.mark.docker, pytest.mark.integration]

MiB = 1024 * 1024
CAP = 5 * MiB
VOLUME_IMAGE = "dgpu-test/busybox-volume:1"


@pytest.fixture
async def capped(
    busybox_image: str, tmp_path: Path, instance: str, docker_engine: docker.DockerClient
) -> AsyncIterator[DockerExecutor]:
    policy = DockerPolicy(workspace_root=tmp_path / "ws", instance=instance, max_output_bytes=CAP)
    ex = await DockerExecutor.connect(policy)
    yield ex
    for c in docker_engine.containers.list(all=True, filters={"label": f"dgpu.instance={instance}"}):
        c.remove(force=True, v=True)
    await ex.close()


def job(image: str, script: str, **kw: object) -> JobSpec:
    return JobSpec(job_id=secrets.token_hex(8), rental_id=secrets.token_hex(8), image=image,
                   command=("sh", "-c", script), **kw)  # type: ignore[arg-type]


def stored(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


async def run_measured(handle: DockerJobHandle) -> tuple[ExitStatus, int, list[str]]:
    """Run to the end; also what the host folder behind /outputs holds at that moment."""
    lines: list[str] = []

    async def collect() -> None:
        async for c in handle.logs():
            lines.append(c.data.decode(errors="replace").rstrip("\n"))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            status = await handle.wait()
        held = await trio.to_thread.run_sync(stored, handle.outputs.path)
    finally:
        await handle.cleanup()
    return status, held, lines


async def test_job_writing_past_the_output_cap_is_stopped(
    capped: DockerExecutor, busybox_image: str, tmp_path: Path
) -> None:
    # 50 files of 1 MiB (none alone near the cap), then it would idle for 10 minutes
    script = ("i=0; while [ $i -lt 50 ]; do dd if=/dev/zero of=/outputs/f$i bs=1M count=1 "
              "2>/dev/null; i=$((i+1)); done; echo WROTE; sleep 600")
    out = tmp_path / "results"
    handle = await capped.start(job(busybox_image, script, output_dir=out),
                                ResourceLimits(time_limit_s=300))
    status, held, _lines = await run_measured(handle)
    assert status.reason is ExitReason.OUTPUT_LIMIT, status
    assert "output limit exceeded" in status.detail
    assert held <= CAP
    assert 0 < stored(out) <= CAP
    assert not (capped.policy.workspace_root / handle.job_id).exists()


async def test_job_that_exits_on_a_full_outputs_is_reported_so(
    capped: DockerExecutor, busybox_image: str
) -> None:
    handle = await capped.start(
        job(busybox_image, "dd if=/dev/zero of=/outputs/big bs=1M count=40 2>&1; exit 3"),
        ResourceLimits(time_limit_s=300),
    )
    status, held, _lines = await run_measured(handle)
    assert status.reason is ExitReason.OUTPUT_LIMIT and status.exit_code == 3
    assert held <= CAP


async def test_writes_under_the_cap_finish_normally(
    capped: DockerExecutor, busybox_image: str, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    handle = await capped.start(
        job(busybox_image, "dd if=/dev/zero of=/outputs/ok bs=1M count=2 2>/dev/null",
            output_dir=out),
        ResourceLimits(time_limit_s=300),
    )
    status, held, _lines = await run_measured(handle)
    assert status.reason is ExitReason.FINISHED and held == 2 * MiB
    assert (out / "ok").stat().st_size == 2 * MiB


async def test_image_volume_is_a_capped_tmpfs_not_host_disk(
    capped: DockerExecutor, busybox_image: str, docker_engine: docker.DockerClient
) -> None:
    from docker_fixtures import busybox_rootfs_tar

    try:
        docker_engine.images.get(VOLUME_IMAGE)
    except docker.errors.ImageNotFound:
        repo, _, tag = VOLUME_IMAGE.partition(":")
        docker_engine.api.import_image_from_data(
            busybox_rootfs_tar(), repository=repo, tag=tag, changes=["VOLUME /data"]
        )
    before = {v.name for v in docker_engine.volumes.list()}
    handle = await capped.start(
        job(VOLUME_IMAGE, "dd if=/dev/zero of=/data/big bs=1M count=40 2>/dev/null; "
            "echo rc=$?; wc -c < /data/big"),
        ResourceLimits(time_limit_s=300, scratch_bytes=4 * MiB),
    )
    _status, _held, lines = await run_measured(handle)
    assert lines[0] != "rc=0" and int(lines[1]) <= 4 * MiB, lines
    assert {v.name for v in docker_engine.volumes.list()} == before  # no anonymous volume


async def test_workspaces_left_by_a_crashed_daemon_are_removed_at_reconcile(
    capped: DockerExecutor, busybox_image: str
) -> None:
    from dgpu.node.adapters.disk_cap import CappedFolder, can_mount_tmpfs

    keep = await capped.start(job(busybox_image, "sleep 600"), ResourceLimits(time_limit_s=300))
    stale = capped.policy.workspace_root / "0123456789abcdef"
    stale.mkdir()
    outputs = CappedFolder.create(stale / "outputs", MiB, uid=os.getuid(), gid=os.getgid(),
                                 hard=can_mount_tmpfs())
    found = await capped.list_jobs()
    assert set(found) == {keep.job_id}
    assert not stale.exists() and not outputs.path.is_mount()
    assert (capped.policy.workspace_root / keep.job_id / "outputs").is_dir()
    await keep.stop(grace_s=0)
    await keep.wait()
    await keep.cleanup()
