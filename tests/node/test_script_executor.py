"""The script executor (weak isolation): scrubbed env, rlimits, network, scratch cleanup."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from dgpu.node.adapters.sandbox import namespace_pids
from dgpu.node.adapters.script_executor import ScriptExecutor, ScriptJobHandle, ScriptPolicy
from dgpu.node.errors import ExecutorUnavailable
from dgpu.node.ports.execution import ExitReason, ExitStatus, JobSpec, LogChunk, ResourceLimits

MiB = 1024 * 1024


@pytest.fixture
async def executor() -> AsyncIterator[ScriptExecutor]:
    root = Path(tempfile.mkdtemp(prefix="dgpu-script-test-"))
    yield await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=root))
    shutil.rmtree(root)


async def test_scratch_root_is_private(tmp_path: Path) -> None:
    # jobs never walk the host path to their folder (bwrap binds it), so it may stay 0700
    ex = await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=tmp_path / "s"))
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    status, _, _ = await run(ex, spec("true"))
    assert status.reason is ExitReason.FINISHED


def spec(script: str, **kw: object) -> JobSpec:
    return JobSpec(job_id=secrets.token_hex(8), rental_id="r" * 16, script=script, **kw)  # type: ignore[arg-type]


async def run(
    ex: ScriptExecutor, job: JobSpec, limits: ResourceLimits | None = None
) -> tuple[ExitStatus, list[LogChunk], ScriptJobHandle]:
    handle = await ex.start(job, limits or ResourceLimits(time_limit_s=30))
    chunks: list[LogChunk] = []

    async def collect() -> None:
        chunks.extend([c async for c in handle.logs()])

    async with trio.open_nursery() as nursery:  # wait() enforces the time limit: run both
        nursery.start_soon(collect)
        status = await handle.wait()
    await handle.cleanup()
    return status, chunks, handle


def out(chunks: list[LogChunk]) -> list[str]:
    return b"".join(c.data for c in chunks if c.stream == "stdout").decode().splitlines()


async def test_disabled_unless_opted_in(tmp_path: Path) -> None:
    ex = await ScriptExecutor.create(ScriptPolicy(enabled=False, scratch_root=tmp_path))
    with pytest.raises(ExecutorUnavailable):
        await ex.start(spec("true"), ResourceLimits())
    assert ex.isolation == "weak" and ex.isolation_statement.startswith("weak")


async def test_environment_scrubbed_and_scratch_removed(
    executor: ScriptExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "fake-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("DGPU_FAKE_PROVIDER_KEY", secret)
    status, chunks, handle = await run(executor, spec("env; pwd", env={"JOB_VAR": "1"}))
    lines = out(chunks)
    assert status.reason is ExitReason.FINISHED
    env = dict(line.split("=", 1) for line in lines[:-1] if "=" in line)
    assert env["JOB_VAR"] == "1" and env["HOME"] == "/job" == lines[-1]
    assert set(env) <= {"JOB_VAR", "HOME", "PATH", "TMPDIR", "LANG", "PWD", "SHLVL", "_", "OLDPWD"}
    assert secret not in "".join(lines)
    assert not handle.scratch.exists()


async def test_file_size_limit_holds(executor: ScriptExecutor) -> None:
    # the job's whole folder is capped (a tmpfs when root; else RLIMIT_FSIZE per file)
    status, chunks, _ = await run(
        executor,
        spec("head -c 3000000 /dev/zero > big; echo rc=$?; wc -c < big"),
        ResourceLimits(scratch_bytes=1_000_000, time_limit_s=30),
    )
    lines = out(chunks)
    assert lines[0] != "rc=0" and 900_000 < int(lines[1]) <= 1_000_000
    assert status.reason is ExitReason.OUTPUT_LIMIT


async def test_memory_limit_holds(executor: ScriptExecutor) -> None:
    # a 200 MB shell variable cannot fit in a 64 MiB address space; 1 MB can
    script = 'x=$(head -c {n} /dev/zero | tr "\\0" a); echo ${{#x}}'
    status, chunks, _ = await run(
        executor, spec(script.format(n=200_000_000)),
        ResourceLimits(memory_bytes=64 * MiB, time_limit_s=30),
    )
    assert out(chunks) != ["200000000"]
    status, chunks, _ = await run(
        executor, spec(script.format(n=1_000_000)),
        ResourceLimits(memory_bytes=64 * MiB, time_limit_s=30),
    )
    assert out(chunks) == ["1000000"] and status.reason is ExitReason.FINISHED


async def test_cpu_and_wall_time_limits(executor: ScriptExecutor) -> None:
    status, _, _ = await run(executor, spec("while :; do :; done"), ResourceLimits(time_limit_s=1))
    assert status.reason is ExitReason.TIMEOUT
    status, chunks, _ = await run(
        executor, spec("echo a; sleep 30; echo b"), ResourceLimits(time_limit_s=1)
    )
    assert status.reason is ExitReason.TIMEOUT and out(chunks) == ["a"]


async def test_network_isolated(executor: ScriptExecutor) -> None:
    assert executor.network_isolated and "no network" in executor.isolation_statement
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    probe = (
        'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d "[:blank:]"; '
        f'(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED || echo REFUSED'
    )
    probe = f"cat > probe.sh <<'EOF'\n{probe}\nEOF\nbash probe.sh"
    _status, chunks, _ = await run(executor, spec(probe))
    assert out(chunks) == ["lo", "REFUSED"]
    # control: with network asked for (the script executor cannot refuse it) it connects
    _status, chunks, _ = await run(executor, spec(probe, network=True))
    assert "CONNECTED" in out(chunks)
    await listener.aclose()


async def test_runs_as_its_own_uid_when_root(executor: ScriptExecutor) -> None:
    _status, chunks, handle = await run(executor, spec("id -u; id -G"))
    if os.geteuid() == 0:
        assert handle.uid is not None and handle.uid >= executor.policy.uid_base
        assert out(chunks) == [str(handle.uid), str(handle.uid)]
    else:
        assert out(chunks)[0] == str(os.geteuid())


async def test_a_gpu_job_sees_only_its_leased_uuids(executor: ScriptExecutor) -> None:
    leased = ("GPU-11111111-aaaa",)
    job = spec('echo "$CUDA_VISIBLE_DEVICES"; echo "$NVIDIA_VISIBLE_DEVICES"', gpu_uuids=leased,
               env={"CUDA_VISIBLE_DEVICES": "all", "NVIDIA_VISIBLE_DEVICES": "all"})  # cannot widen the lease
    status, chunks, _ = await run(executor, job)
    assert status.reason is ExitReason.FINISHED
    assert out(chunks) == [leased[0], leased[0]]


async def test_a_restarted_daemon_kills_what_is_left_of_a_job_by_its_token(executor: ScriptExecutor) -> None:
    # the handle is lost, as when the daemon that started the job crashed: only its token, stored
    # as the job's container_id, is left to find the job's processes by
    handle = await executor.start(spec("echo up; while true; do sleep 1; done"), ResourceLimits(time_limit_s=60))
    token = handle.container_id
    with trio.fail_after(10):  # the sandbox's namespace is up (its init forked the job)
        while not await trio.to_thread.run_sync(namespace_pids, handle.pid):
            await trio.sleep(0.05)
    stale = token.split(":")
    stale[2] = str(int(stale[2]) + 1)  # the same pid, started at another time: a reused pid
    assert await executor.reap(":".join(stale)) == 0 and handle._proc.returncode is None
    assert await executor.reap(token) >= 2  # bwrap and the job's processes in its namespace
    with trio.fail_after(10):
        status = await handle.wait()
    assert status.exit_code is not None and status.exit_code < 0
    assert await executor.reap(token) == 0  # nothing is left
    await handle.cleanup()
