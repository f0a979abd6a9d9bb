"""The Docker executor's isolation, limits, logs and cleanup, against the real engine.

Each test would fail if the property it names broke (a control run shows the probe works).
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

import docker
import pytest
import trio
from docker_fixtures import bridge_gateway

from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy
from dgpu.node.errors import ImageNotAllowed, JobSpecInvalid
from dgpu.node.ports.execution import ExitReason, ExitStatus, JobSpec, LogChunk, ResourceLimits

pytestmark = [pytest.mark.docker, pytest.mark.integration]

MiB = 1024 * 1024


def job(image: str, script: str, **kw: object) -> JobSpec:
    return JobSpec(
        job_id=secrets.token_hex(8),
        rental_id=secrets.token_hex(8),
        image=image,
        command=("sh", "-c", script),
        **kw,  # type: ignore[arg-type]
    )


async def run(
    ex: DockerExecutor, spec: JobSpec, limits: ResourceLimits | None = None
) -> tuple[ExitStatus, list[LogChunk]]:
    handle = await ex.start(spec, limits or ResourceLimits(time_limit_s=60))
    chunks: list[LogChunk] = []
    try:
        async with trio.open_nursery() as nursery:

            async def collect() -> None:
                async for c in handle.logs():
                    chunks.append(c)

            nursery.start_soon(collect)
            status = await handle.wait()
    finally:
        await handle.cleanup()
    return status, chunks


def stdout(chunks: list[LogChunk]) -> str:
    return b"".join(c.data for c in chunks if c.stream == "stdout").decode()


async def test_runs_as_non_root_and_finishes(executor: DockerExecutor, busybox_image: str) -> None:
    status, chunks = await run(executor, job(busybox_image, "id -u; echo done"))
    assert status.reason is ExitReason.FINISHED and status.exit_code == 0
    assert stdout(chunks).split() == ["65534", "done"]


async def test_no_network_when_off(executor: DockerExecutor, busybox_image: str,
                                   docker_engine: docker.DockerClient) -> None:
    gateway = bridge_gateway(docker_engine)
    accepted = []

    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(1)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=gateway))
        port = listeners[0].socket.getsockname()[1]
        probe = (
            "ls /sys/class/net; "
            f"if nc -w 3 {gateway} {port} </dev/null; then echo CONNECTED; else echo REFUSED; fi"
        )
        status, chunks = await run(executor, job(busybox_image, probe))
        out = stdout(chunks).split()
        # control: the same probe with networking allowed does reach the listener
        open_policy = DockerPolicy(
            workspace_root=executor.policy.workspace_root, instance=executor.policy.instance,
            allow_network=True,
        )
        open_ex = await DockerExecutor.connect(open_policy)
        _, control = await run(open_ex, job(busybox_image, probe, network=True))
        await open_ex.close()
        nursery.cancel_scope.cancel()
    assert status.reason is ExitReason.FINISHED
    assert out == ["lo", "REFUSED"]
    assert "CONNECTED" in stdout(control).split()
    assert len(accepted) == 1  # only the control connected


async def test_network_refused_unless_policy_allows(executor: DockerExecutor,
                                                    busybox_image: str) -> None:
    with pytest.raises(JobSpecInvalid):
        await executor.start(job(busybox_image, "true", network=True), ResourceLimits())


async def test_daemon_environment_not_visible(
    executor: DockerExecutor, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "dgpu-fake-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("DGPU_FAKE_PROVIDER_KEY", secret)
    assert os.environ["DGPU_FAKE_PROVIDER_KEY"] == secret
    status, chunks = await run(executor, job(busybox_image, "env", env={"JOB_VAR": "visible"}))
    out = stdout(chunks)
    assert status.reason is ExitReason.FINISHED
    assert "JOB_VAR=visible" in out.splitlines()  # the probe does see the job's env
    assert secret not in out and "DGPU_FAKE_PROVIDER_KEY" not in out


async def test_root_is_read_only_and_tmp_is_writable(executor: DockerExecutor,
                                                     busybox_image: str) -> None:
    script = (
        "touch /rootfile 2>/dev/null && echo ROOT_WRITABLE || echo ROOT_RO; "
        "touch /tmp/ok && echo TMP_OK; "
        "touch /inputs/x 2>/dev/null && echo INPUTS_WRITABLE || echo INPUTS_RO"
    )
    status, chunks = await run(executor, job(busybox_image, script))
    assert stdout(chunks).split() == ["ROOT_RO", "TMP_OK", "INPUTS_RO"]
    assert status.reason is ExitReason.FINISHED


async def test_killed_at_time_limit(executor: DockerExecutor, busybox_image: str) -> None:
    status, chunks = await run(
        executor, job(busybox_image, "echo started; sleep 60; echo not-reached"),
        ResourceLimits(time_limit_s=2),
    )
    assert status.reason is ExitReason.TIMEOUT
    assert stdout(chunks).split() == ["started"]


async def test_memory_limit_oom(executor: DockerExecutor, busybox_image: str) -> None:
    status, _ = await run(
        executor, job(busybox_image, "head -c 300m /dev/zero | tail"),
        ResourceLimits(memory_bytes=64 * MiB, time_limit_s=60),
    )
    assert status.reason is ExitReason.OOM
    assert status.exit_code == 137
    # control: the same pipeline under a limit it fits in finishes
    status, _ = await run(
        executor, job(busybox_image, "head -c 8m /dev/zero | tail | wc -c"),
        ResourceLimits(memory_bytes=64 * MiB, time_limit_s=60),
    )
    assert status.reason is ExitReason.FINISHED


async def test_logs_complete_and_in_order(executor: DockerExecutor, busybox_image: str) -> None:
    status, chunks = await run(executor, job(busybox_image, "seq 1 2000; echo tail >&2"))
    assert status.reason is ExitReason.FINISHED
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    lines = [c.data for c in chunks if c.stream == "stdout"]
    assert lines == [f"{i}\n".encode() for i in range(1, 2001)]
    assert [c.data for c in chunks if c.stream == "stderr"] == [b"tail\n"]


async def test_stop_is_cancelled_and_everything_cleaned(
    executor: DockerExecutor, busybox_image: str, docker_engine: docker.DockerClient,
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("hello input\n")
    out_dir = tmp_path / "results"
    spec = job(
        busybox_image,
        "cat /inputs/data/in.txt > /outputs/copy.txt; echo ready; sleep 60",
        inputs={"data/in.txt": source}, output_dir=out_dir,
    )
    handle = await executor.start(spec, ResourceLimits(time_limit_s=60))
    labels = docker_engine.containers.get(handle.container_id).labels
    assert labels["dgpu.job_id"] == spec.job_id and labels["dgpu.rental_id"] == spec.rental_id
    logs = handle.logs()
    first = await logs.__anext__()
    assert first.data == b"ready\n"
    await handle.stop(grace_s=1)
    status = await handle.wait()
    await logs.aclose()
    await handle.cleanup()
    assert status.reason is ExitReason.CANCELLED
    assert (out_dir / "copy.txt").read_text() == "hello input\n"
    found = docker_engine.containers.list(all=True, filters={"label": f"dgpu.job_id={spec.job_id}"})
    assert found == []
    assert not (executor.policy.workspace_root / spec.job_id).exists()


async def test_image_outside_policy_refused(executor: DockerExecutor) -> None:
    with pytest.raises(ImageNotAllowed):
        await executor.start(
            job("registry.invalid/not/here:1", "true"), ResourceLimits()
        )
