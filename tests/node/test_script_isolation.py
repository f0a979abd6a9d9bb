"""Script jobs against each other and against the node: an attacker job B next to a victim A.

Each probe has a control (B reading its own /proc entry, A's file seen from the host) so a
probe that silently fails everywhere cannot pass the test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dgpu.node.adapters.script_executor import ScriptExecutor, ScriptJobHandle, ScriptPolicy
from dgpu.node.ports.execution import ExitReason, JobSpec, ResourceLimits

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def daemon_umask() -> Iterator[None]:
    old = os.umask(0o077)  # what `dgpu node` runs with
    yield
    os.umask(old)


@pytest.fixture
def node_dir() -> Iterator[Path]:
    """A node's data dir: a database and a key beside the job folders."""
    root = Path(tempfile.mkdtemp(prefix="dgpu-isolation-test-"))
    root.chmod(0o755)  # even a data dir others may read stays out of a job's view
    for name, text in (("node.sqlite3", "NODE-DATABASE-CONTENT"), ("identity.json", "NODE-KEY-CONTENT")):
        (root / name).write_text(text)
        (root / name).chmod(0o644)
    yield root
    shutil.rmtree(root)


def spec(script: str, **kw: object) -> JobSpec:
    return JobSpec(job_id=secrets.token_hex(8), rental_id="r" * 16, script=script, **kw)  # type: ignore[arg-type]


async def collect(handle: ScriptJobHandle, lines: list[str], ready: trio.Event) -> None:
    async for chunk in handle.logs():
        lines.append(chunk.data.decode(errors="replace").rstrip("\n"))
        if lines[-1] == "READY":
            ready.set()


async def run_to_end(handle: ScriptJobHandle) -> tuple[list[str], ExitReason]:
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, handle, lines, trio.Event())
        status = await handle.wait()
    return lines, status.reason


async def test_a_job_cannot_read_or_alter_another_job_or_see_the_node(node_dir: Path) -> None:
    ex = await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=node_dir / "jobs"))
    secret = "API_KEY_" + secrets.token_hex(12)
    victim = await ex.start(
        spec('echo "$API_KEY" > secret.txt; echo READY; exec sleep 600', env={"API_KEY": secret}),
        ResourceLimits(time_limit_s=120),
    )
    a_lines: list[str] = []
    ready = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, victim, a_lines, ready)
            with trio.fail_after(60):
                await ready.wait()
            a_file = victim.scratch / "secret.txt"
            assert a_file.read_text().strip() == secret  # control: A's file is there
            attack = f"""
echo SELF $(tr '\\0' '\\n' < /proc/$$/environ | grep -c '^HOME=')
for p in /proc/[0-9]*; do cat $p/environ $p/cwd/secret.txt 2>/dev/null; echo; done
for p in /proc/[0-9]*; do printf 'CMD '; tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null
cat {a_file} 2>&1; echo overwritten > {a_file} 2>&1
for p in /proc/[0-9]*; do echo overwritten > $p/cwd/secret.txt; done 2>/dev/null
ls -a {node_dir} {node_dir / 'jobs'} 2>&1; cat {node_dir / 'node.sqlite3'} 2>&1
cat {node_dir / 'identity.json'} 2>&1; ls -a / | tr '\\n' ' '; echo
"""
            attacker = await ex.start(spec(attack), ResourceLimits())
            b_lines, b_reason = await run_to_end(attacker)
            await attacker.cleanup()
            if os.geteuid() == 0:
                assert None is not victim.uid != attacker.uid is not None
            assert a_file.read_text().strip() == secret  # B could not overwrite it
            nursery.cancel_scope.cancel()
    finally:
        await victim.stop(grace_s=5)
        await victim.wait()
        await victim.cleanup()
    text = "\n".join(b_lines)
    assert b_reason is ExitReason.FINISHED, text
    assert "SELF 1" in b_lines  # control: the probe reads environ where it may
    assert secret not in text
    assert "NODE-DATABASE-CONTENT" not in text and "NODE-KEY-CONTENT" not in text
    commands = [line for line in b_lines if line.startswith("CMD ")]
    assert any("bwrap" in c for c in commands)  # control: B lists its own processes
    assert not any("sleep" in c for c in commands)  # A's processes are not in B's view
    listed = {line.strip() for line in b_lines}  # what `ls` of the data dir would print
    assert not listed & {"node.sqlite3", "identity.json", victim.scratch.parent.name}
    assert a_lines == ["READY"]


async def test_job_folder_is_private_to_its_uid(node_dir: Path) -> None:
    ex = await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=node_dir / "jobs"))
    handle = await ex.start(spec("echo READY; exec sleep 600"), ResourceLimits(time_limit_s=60))
    lines: list[str] = []
    ready = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, handle, lines, ready)
            with trio.fail_after(60):
                await ready.wait()
            st = handle.scratch.stat()
            assert st.st_mode & 0o777 == 0o700
            assert (node_dir / "jobs").stat().st_mode & 0o777 == 0o700
            assert handle.scratch.parent.stat().st_mode & 0o777 == 0o700
            if os.geteuid() == 0:
                assert st.st_uid == handle.uid != 0
            nursery.cancel_scope.cancel()
    finally:
        await handle.stop(grace_s=5)
        await handle.wait()
        await handle.cleanup()
    assert not handle.scratch.exists()


async def test_uids_differ_between_running_jobs_and_are_reused_after(node_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root daemon gives each job its own uid")
    ex = await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=node_dir / "jobs"))
    first = await ex.start(spec("exec sleep 600"), ResourceLimits(time_limit_s=60))
    second = await ex.start(spec("exec sleep 600"), ResourceLimits(time_limit_s=60))
    assert first.uid != second.uid
    for h in (first, second):
        await h.stop(grace_s=0)
        await h.wait()
        await h.cleanup()
    third = await ex.start(spec("true"), ResourceLimits(time_limit_s=60))
    _lines, reason = await run_to_end(third)
    await third.cleanup()
    assert reason is ExitReason.FINISHED and third.uid in {first.uid, second.uid}


async def test_job_that_fills_its_folder_is_stopped_at_the_cap(node_dir: Path) -> None:
    ex = await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=node_dir / "jobs"))
    cap = 4 * MiB
    # many files (each under the per-file rlimit) in outputs and tmp, then keep running
    script = """
i=0; while [ $i -lt 40 ]; do
  head -c 262144 /dev/zero > outputs/f$i; head -c 262144 /dev/zero > /tmp/t$i; i=$((i+1))
done
echo WROTE; exec sleep 600
"""
    out = node_dir / "out"
    handle = await ex.start(spec(script, output_dir=out), ResourceLimits(scratch_bytes=cap, time_limit_s=120))
    lines: list[str] = []
    used_at_stop = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, handle, lines, trio.Event())
        status = await handle.wait()
        used_at_stop = sum(p.stat().st_size for p in handle.scratch.rglob("*") if p.is_file())
    await handle.cleanup()
    assert status.reason is ExitReason.OUTPUT_LIMIT and "output limit exceeded" in status.detail
    if "hard tmpfs" in ex.isolation_statement:
        assert used_at_stop <= cap
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) <= cap


async def test_env_never_in_repr() -> None:
    job = spec("true", env={"API_KEY": "do-not-log-me"})
    assert "do-not-log-me" not in repr(job)



async def test_inputs_readable_by_the_job_under_the_daemon_umask(node_dir: Path) -> None:
    ex = await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=node_dir / "jobs"))
    source = node_dir / "words.txt"
    source.write_text("hello inputs\n")
    job = spec("cat inputs/data/words.txt; (echo x > inputs/new) 2>/dev/null || echo READ-ONLY",
               inputs={"data/words.txt": source})
    handle = await ex.start(job, ResourceLimits())
    lines, reason = await run_to_end(handle)
    await handle.cleanup()
    assert reason is ExitReason.FINISHED and lines == ["hello inputs", "READ-ONLY"], lines


async def test_folders_left_by_a_crashed_daemon_are_removed_at_start(node_dir: Path) -> None:
    from dgpu.node.adapters.disk_cap import CappedFolder, can_mount_tmpfs

    (node_dir / "jobs").mkdir(mode=0o700)
    (node_dir / "jobs" / "job-left-x").mkdir()
    left = CappedFolder.create(node_dir / "jobs" / "job-left-x" / "home", MiB, uid=os.getuid(),
                               gid=os.getgid(), hard=can_mount_tmpfs())
    (left.path / "junk").write_bytes(b"x" * 1000)
    await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=node_dir / "jobs"))
    assert not left.path.is_mount() and not (node_dir / "jobs" / "job-left-x").exists()


def test_device_nodes_are_bound_only_when_given(tmp_path: Path) -> None:
    import subprocess

    from dgpu.node.adapters.sandbox import bwrap_argv, detect_bwrap

    dev = "/dev/loop-control"  # stands in for /dev/nvidia*: a node bwrap's minimal /dev lacks
    bwrap = detect_bwrap()
    if bwrap is None or not Path(dev).exists():
        pytest.skip("needs bwrap and a device node outside bwrap's minimal /dev")
    for sub in ("home/tmp", "home/inputs", "inputs"):
        (tmp_path / sub).mkdir(parents=True)
    seen = []
    for devices in ([], [dev]):
        argv = bwrap_argv(bwrap, home=tmp_path / "home", inputs=tmp_path / "inputs", network=False,
                          user_ns=os.geteuid() != 0, argv=["/bin/ls", dev], devices=devices)
        seen.append(subprocess.run(argv, capture_output=True, check=False).returncode == 0)
    assert seen == [False, True]
