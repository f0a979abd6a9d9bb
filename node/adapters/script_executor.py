"""Run script jobs as plain processes, for hosts without Docker. Opt-in; WEAK isolation.

What it does: each job gets its own scratch folder (``HOME``, working directory, ``TMPDIR``;
removed at cleanup); the environment is scrubbed to the job's own variables plus
``PATH``/``HOME``/``TMPDIR``; ``resource.setrlimit`` in the child (before exec) caps CPU time,
address space, file size, open files and (when the daemon is root and so can drop to
``nobody``) processes; the child runs in its own session so stop signals reach the whole
process group; when the daemon is root the job runs as ``65534:65534``; the network is cut
with ``unshare -n`` where that works (detected once, :attr:`ScriptExecutor.network_isolated`).

What it does NOT do, and offers must say so (``isolation = "weak"``): the job shares the
host's kernel, file system view (it can read anything ``nobody`` can), process table and,
where ``unshare`` is unavailable, its network; limits are per process, not per job.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dgpu.node.adapters.executor import split_lines
from dgpu.node.errors import ExecutorFailure, ExecutorUnavailable, JobSpecInvalid
from dgpu.node.ports.execution import (
    ExitReason,
    ExitStatus,
    Isolation,
    JobSpec,
    LogChunk,
    ResourceLimits,
    StreamName,
)

__all__ = ["ISOLATION_STATEMENT", "ScriptExecutor", "ScriptJobHandle", "ScriptPolicy"]

ISOLATION_STATEMENT = (
    "weak: script jobs run as host processes (own scratch folder, scrubbed environment, "
    "rlimits{net}); no container, shared kernel and file system view"
)
NOBODY = 65534
MAX_LOG_CHUNK = 16 * 1024
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class ScriptPolicy:
    enabled: bool  #: the provider opted in; False → every start raises ExecutorUnavailable
    scratch_root: Path
    max_limits: ResourceLimits = field(
        default_factory=lambda: ResourceLimits(
            memory_bytes=16 * 1024**3, cpus=8.0, pids=512, time_limit_s=24 * 3600.0
        )
    )
    max_output_bytes: int = 256 * 1024**2


def detect_unshare_net() -> list[str] | None:
    """The command prefix that gives a child its own empty network namespace, or None."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    for prefix in ([exe, "-n", "--"], [exe, "-r", "-n", "--"]):
        try:
            done = subprocess.run(
                [*prefix, "true"], capture_output=True, timeout=5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return None


def _preexec(limits: ResourceLimits, drop_to_nobody: bool) -> Callable[[], None]:
    """Runs in the forked child before exec: only async-signal-safe-ish calls, no allocation
    beyond what ``resource``/``os`` need."""
    cpu = max(1, int(limits.time_limit_s + 1))
    mem = limits.memory_bytes
    fsize = limits.scratch_bytes
    nproc = limits.pids

    def fn() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if drop_to_nobody:
            # RLIMIT_NPROC counts the user's processes: only meaningful for a dedicated user
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return fn


class ScriptExecutor:
    """The script executor (``isolation = "weak"``)."""

    kind = "script"
    isolation: Isolation = "weak"

    def __init__(self, policy: ScriptPolicy, *, unshare_prefix: list[str] | None = None) -> None:
        self.policy = policy
        self._unshare = unshare_prefix
        self._root = os.geteuid() == 0

    @classmethod
    async def create(cls, policy: ScriptPolicy) -> ScriptExecutor:
        """Detect ``unshare -n`` (once) and build the executor."""
        prefix = await trio.to_thread.run_sync(detect_unshare_net)
        policy.scratch_root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # jobs run as nobody: they must traverse (not list) the root to reach their scratch
            policy.scratch_root.chmod(0o711)
            for parent in policy.scratch_root.resolve().parents:
                if not parent.stat().st_mode & 0o001:
                    raise ExecutorUnavailable(
                        f"script jobs run as uid {NOBODY}, who cannot reach the scratch root "
                        f"{policy.scratch_root}: {parent} is not searchable by others"
                    )
        return cls(policy, unshare_prefix=prefix)

    @property
    def network_isolated(self) -> bool:
        return self._unshare is not None

    @property
    def isolation_statement(self) -> str:
        net = ", no network (unshare -n)" if self._unshare else ", NETWORK NOT ISOLATED"
        return ISOLATION_STATEMENT.format(net=net)

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> ScriptJobHandle:
        if not self.policy.enabled:
            raise ExecutorUnavailable("the provider has not enabled the script executor")
        limits = limits.clamp(self.policy.max_limits)
        scratch = Path(
            await trio.to_thread.run_sync(
                lambda: tempfile.mkdtemp(prefix=f"job-{spec.job_id}-", dir=self.policy.scratch_root)
            )
        )
        try:
            argv = await trio.to_thread.run_sync(self._prepare, spec, scratch)
            env = {
                "PATH": _SAFE_PATH,
                "HOME": str(scratch),
                "TMPDIR": str(scratch / "tmp"),
                "LANG": "C.UTF-8",
            }
            if spec.gpu_uuids:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_uuids)
            env.update(spec.env)
            use_unshare = self._unshare is not None and not spec.network
            drop = self._root
            if use_unshare and self._unshare is not None:
                prefix = list(self._unshare)
                if drop:
                    prefix[-1:-1] = ["--setgid", str(NOBODY), "--setuid", str(NOBODY)]
                argv = [*prefix, *argv]
            options: dict[str, Any] = {}
            if drop and not use_unshare:
                options.update(user=NOBODY, group=NOBODY, extra_groups=[])
            proc = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=str(scratch),
                start_new_session=True,
                preexec_fn=_preexec(limits, drop),
                close_fds=True,
                **options,
            )
        except OSError as exc:
            await trio.to_thread.run_sync(_rmtree, scratch)
            raise ExecutorFailure(f"could not start the script: {exc}") from exc
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_rmtree, scratch)
            raise
        return ScriptJobHandle(self, proc, spec, limits, scratch)

    def _prepare(self, spec: JobSpec, scratch: Path) -> list[str]:
        (scratch / "tmp").mkdir()
        (scratch / "outputs").mkdir()
        inputs = scratch / "inputs"
        inputs.mkdir()
        for rel, source in spec.inputs.items():
            if not source.is_file():
                raise JobSpecInvalid(f"input {rel!r}: {source} is not a readable file")
            dest = inputs / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            dest.chmod(0o444)
        if spec.script is not None:
            (scratch / "job.sh").write_text(spec.script)
            argv = ["/bin/sh", str(scratch / "job.sh"), *spec.command]
        else:
            argv = list(spec.command)
            if not argv:
                raise JobSpecInvalid("a script job needs a script or a command")
        if self._root:
            for path in [scratch, *scratch.rglob("*")]:
                os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        return argv


class ScriptJobHandle:
    """A running script job; ``logs()`` has a single consumer."""

    def __init__(
        self,
        executor: ScriptExecutor,
        proc: trio.Process,
        spec: JobSpec,
        limits: ResourceLimits,
        scratch: Path,
    ) -> None:
        self._ex = executor
        self._proc = proc
        self.spec = spec
        self.limits = limits
        self.scratch = scratch
        self.started_at = time.time()
        self._deadline = trio.current_time() + limits.time_limit_s
        self._stop_reason: ExitReason | None = None
        self._status: ExitStatus | None = None
        self._cleaned = False
        # bound: 64 chunks in flight between the two pipe readers and the consumer; a slow
        # consumer stalls the readers, then the pipes, then the job (back-pressure)
        self._send, self._recv = trio.open_memory_channel[tuple[StreamName, bytes]](64)
        self._start_readers()

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _start_readers(self) -> None:
        """Read both pipes from now on, in system tasks (so no nursery has to live inside
        the ``logs()`` generator). They end at EOF, or when cleanup closes the pipes."""
        pipes: tuple[tuple[StreamName, Any], ...] = (
            ("stdout", self._proc.stdout),
            ("stderr", self._proc.stderr),
        )
        for name, stream in pipes:
            trio.lowlevel.spawn_system_task(
                _read_pipe, name, stream, self._send.clone(), name=f"script-log-{name}"
            )
        self._send.close()

    async def logs(self) -> AsyncIterator[LogChunk]:
        """Lines from stdout and stderr in the order they were read; ends at EOF on both.

        The job blocks once 64 chunks wait unread (pipe back-pressure): keep consuming.
        """
        seq = 0
        buffers: dict[StreamName, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        async with self._recv:
            async for name, data in self._recv:
                for line in split_lines(buffers[name], data, MAX_LOG_CHUNK):
                    yield LogChunk(seq, name, line)
                    seq += 1
        for name, rest in buffers.items():
            if rest:
                yield LogChunk(seq, name, bytes(rest))
                seq += 1

    async def wait(self) -> ExitStatus:
        if self._status is not None:
            return self._status
        with trio.move_on_at(self._deadline) as scope:
            await self._proc.wait()
        if scope.cancelled_caught:
            self._stop_reason = self._stop_reason or ExitReason.TIMEOUT
            await self._kill(grace_s=min(10.0, self.limits.time_limit_s))
        code = await self._proc.wait()
        sig = -code if code < 0 else None
        if self._stop_reason is not None:
            status = ExitStatus(code, self._stop_reason)
        elif sig == signal.SIGXCPU:
            status = ExitStatus(code, ExitReason.TIMEOUT, "CPU time limit")
        elif sig == signal.SIGKILL:
            status = ExitStatus(code, ExitReason.FAILED, "killed (SIGKILL)")
        elif code == 0:
            status = ExitStatus(0, ExitReason.FINISHED)
        elif sig == signal.SIGXFSZ:
            status = ExitStatus(code, ExitReason.FAILED, "file size limit")
        else:
            status = ExitStatus(code, ExitReason.FAILED, f"exit code {code}")
        self._status = status
        return status

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stop_reason = self._stop_reason or ExitReason.CANCELLED
        await self._kill(grace_s)

    async def _kill(self, grace_s: float) -> None:
        with trio.CancelScope(shield=True):
            self._signal_group(signal.SIGTERM)
            with trio.move_on_after(grace_s):
                await self._proc.wait()
            self._signal_group(signal.SIGKILL)  # the group too: children may outlive the leader
            await self._proc.wait()

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def cleanup(self) -> None:
        """Kill anything left of the job, collect outputs, remove the scratch. Idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        with trio.CancelScope(shield=True):
            if self._proc.returncode is None:
                await self._kill(grace_s=0)
            else:
                self._signal_group(signal.SIGKILL)  # stragglers in the job's session
            try:
                if self.spec.output_dir is not None:
                    from dgpu.node.adapters.docker_executor import _copy_outputs

                    await trio.to_thread.run_sync(
                        _copy_outputs,
                        self.scratch / "outputs",
                        self.spec.output_dir,
                        self._ex.policy.max_output_bytes,
                    )
            finally:
                for pipe in (self._proc.stdout, self._proc.stderr):
                    if pipe is not None:
                        await pipe.aclose()
                await trio.to_thread.run_sync(_rmtree, self.scratch)


async def _read_pipe(
    name: StreamName, stream: Any, out: trio.MemorySendChannel[tuple[StreamName, bytes]]
) -> None:
    """A system task: copy one pipe into the channel until EOF or until either side closes."""
    async with out:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            while True:
                data = await stream.receive_some(MAX_LOG_CHUNK)
                if not data:
                    return
                await out.send((name, data))


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
