"""Run script jobs as sandboxed host processes, for hosts without Docker. Opt-in; WEAK isolation.

Each job, isolated from the node and from other jobs (see :mod:`dgpu.node.adapters.sandbox`):
- its own host uid (``uid_base + slot``, from :class:`~dgpu.node.adapters.sandbox.UidPool`, when
  the daemon is root; released at cleanup, never reused while a process of it lives), no
  supplementary groups, no capabilities, ``no_new_privs``;
- bubblewrap: its own PID, mount, IPC, UTS and (unless the job asked for network) network
  namespaces; its file view is the read-only system folders (:data:`SYSTEM_DIRS`), its private
  folder at ``/job`` (``HOME``, working directory; ``/tmp`` is ``/job/tmp``), its inputs read-only
  at ``/job/inputs``, a fresh ``/proc`` showing its own processes only and a minimal ``/dev``
  (plus the NVIDIA device nodes for a job given GPUs);
  nothing of the node's data dir (database, keys, other jobs' folders);
- the private folder is mode 0700, owned by the job's uid, capped at ``scratch_bytes``: a tmpfs
  of that size when the daemon can mount (hard), else a watched folder plus RLIMIT_FSIZE (soft,
  see :mod:`dgpu.node.adapters.disk_cap`); a job that fills it is stopped (``OUTPUT_LIMIT``);
- the environment is the job's own variables plus ``PATH``/``HOME``/``TMPDIR``/``LANG``;
- rlimits (CPU time, address space, file size, open files, and per uid the process count).

What it does NOT do, and offers must say so (``isolation = "weak"``): the job shares the
host's kernel (one kernel exploit escapes the sandbox) and GPUs; it can read the system
folders, ``/etc`` included, as any unprivileged user can; CPU and memory limits are per
process (rlimits), not per job (no cgroup). When the daemon is not root all jobs run as the
daemon's uid, separated by namespaces only, and the folder cap is soft.
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

from dgpu.node.adapters.disk_cap import CappedFolder, can_mount_tmpfs
from dgpu.node.adapters.executor import copy_inputs, copy_outputs, split_lines, wait_enforcing
from dgpu.node.adapters.sandbox import (
    DEFAULT_UID_BASE,
    JOB_HOME,
    SYSTEM_DIRS,
    UidPool,
    bwrap_argv,
    gpu_devices,
    kill_leftovers,
    namespace_pids,
    probe_bwrap,
    process_start,
)
from dgpu.node.adapters.spawn import SpawnedProcess, spawn
from dgpu.node.errors import ExecutorFailure, ExecutorUnavailable, JobSpecInvalid
from dgpu.node.ports.execution import ExitReason, ExitStatus, Isolation, JobSpec, LogChunk, ResourceLimits, StreamName

__all__ = ["ISOLATION_STATEMENT", "ScriptExecutor", "ScriptJobHandle", "ScriptPolicy"]

ISOLATION_STATEMENT = (
    "weak: script jobs are host processes sharing the kernel and GPUs; each runs {who} in its "
    "own bubblewrap PID, mount, IPC and UTS namespaces{net}, sees only read-only system folders "
    "and its private 0700 folder (not the node's data dir, other jobs or their processes), "
    "writes at most its scratch limit ({cap} cap); NOT isolated: the kernel, /etc and the "
    "system folders (readable), CPU and memory limits are per process, not per job"
)
MAX_LOG_CHUNK = 16 * 1024
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class ScriptPolicy:
    enabled: bool  #: the provider opted in; False → every start raises ExecutorUnavailable
    scratch_root: Path  #: job folders live here (mode 0700, root-owned when root)
    max_limits: ResourceLimits = field(
        default_factory=lambda: ResourceLimits(
            memory_bytes=16 * 1024**3, cpus=8.0, pids=512, time_limit_s=24 * 3600.0
        )
    )
    max_output_bytes: int = 256 * 1024**2
    uid_base: int = DEFAULT_UID_BASE  #: job uids are uid_base .. uid_base + uid_count - 1
    uid_count: int = 4096


def _preexec(limits: ResourceLimits, own_uid: bool) -> Callable[[], None]:
    """Runs in the forked child before exec: only async-signal-safe-ish calls, no allocation
    beyond what ``resource``/``os`` need."""
    cpu = max(1, int(limits.time_limit_s + 1))
    mem = limits.memory_bytes
    fsize = limits.scratch_bytes
    nproc = limits.pids + 2  # bwrap's two processes

    def fn() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if own_uid:
            # RLIMIT_NPROC counts the user's processes: only meaningful for a dedicated user
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return fn


class ScriptExecutor:
    """The script executor (``isolation = "weak"``). Build with :meth:`create`."""

    kind = "script"
    isolation: Isolation = "weak"

    def __init__(
        self, policy: ScriptPolicy, *, bwrap: str, setpriv: str | None, hard_cap: bool
    ) -> None:
        self.policy = policy
        self._bwrap = bwrap
        self._setpriv = setpriv  #: set when root: jobs drop to their own uid through it
        self._hard_cap = hard_cap
        self._uids = UidPool(policy.uid_base, policy.uid_count)

    @classmethod
    async def create(cls, policy: ScriptPolicy) -> ScriptExecutor:
        """Check bubblewrap works here (once) and build the executor."""
        root = os.geteuid() == 0
        setpriv = shutil.which("setpriv") if root else None
        if root and setpriv is None:
            raise ExecutorUnavailable("script jobs need setpriv (util-linux) to drop to their uid")
        bwrap, why = await trio.to_thread.run_sync(probe_bwrap)
        if bwrap is None:
            raise ExecutorUnavailable(
                f"script jobs need a working bubblewrap ({why}; apt-get install bubblewrap; "
                "unprivileged user namespaces when the node is not root)"
            )
        scratch = policy.scratch_root.resolve()
        for d in SYSTEM_DIRS:
            if scratch.is_relative_to(d):
                raise ExecutorUnavailable(f"the scratch root {scratch} is inside {d}, which jobs see")
        policy.scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        policy.scratch_root.chmod(0o700)
        # script jobs die with the daemon (bwrap --die-with-parent) and are never re-attached:
        # any job folder here is a crashed daemon's (its tmpfs still holds memory)
        await trio.to_thread.run_sync(_sweep, policy.scratch_root)
        hard = await trio.to_thread.run_sync(can_mount_tmpfs)
        return cls(policy, bwrap=bwrap, setpriv=setpriv, hard_cap=hard)

    def release_uid(self, uid: int) -> None:
        self._uids.release(uid)

    @property
    def network_isolated(self) -> bool:
        return True  # bwrap --unshare-net, for every job that did not ask for network

    @property
    def isolation_statement(self) -> str:
        p = self.policy
        who = (f"as its own uid ({p.uid_base}+slot)" if self._setpriv
               else "as the daemon's uid (the node is not root)")
        return ISOLATION_STATEMENT.format(
            who=who, net=", no network (an empty network namespace; the host's network only for "
            "a job that asks for it)",
            cap="hard tmpfs" if self._hard_cap else "soft, sampled",
        )

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> ScriptJobHandle:
        if not self.policy.enabled:
            raise ExecutorUnavailable("the provider has not enabled the script executor")
        limits = limits.clamp(self.policy.max_limits)
        uid = await trio.to_thread.run_sync(self._uids.acquire) if self._setpriv else None
        job_dir: Path | None = None
        home: CappedFolder | None = None
        try:
            job_dir = Path(await trio.to_thread.run_sync(
                lambda: tempfile.mkdtemp(prefix=f"job-{spec.job_id}-", dir=self.policy.scratch_root)
            ))
            home = await trio.to_thread.run_sync(self._prepare, spec, limits, job_dir, uid)
            argv = list(spec.command)
            if spec.script is not None:
                argv = ["/bin/sh", f"{JOB_HOME}/job.sh", *spec.command]
            elif not argv:
                raise JobSpecInvalid("a script job needs a script or a command")
            if self._setpriv is not None and uid is not None:
                argv = [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv]
            devices = await trio.to_thread.run_sync(gpu_devices) if spec.gpu_uuids else []
            argv = bwrap_argv(self._bwrap, home=home.path, inputs=job_dir / "inputs",
                              network=spec.network, user_ns=self._setpriv is None, argv=argv,
                              devices=devices)
            env = spec.job_env({"PATH": _SAFE_PATH, "HOME": JOB_HOME, "TMPDIR": "/tmp", "LANG": "C.UTF-8"})
            proc = spawn(  # from the trio thread: --die-with-parent is per thread
                argv,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd="/",
                start_new_session=True,
                preexec_fn=_preexec(limits, uid is not None),
                close_fds=True,
            )
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if job_dir is not None:
                    await trio.to_thread.run_sync(_remove_job_dir, job_dir, home)
                if uid is not None:
                    self._uids.release(uid)
            if isinstance(exc, OSError):
                raise ExecutorFailure(f"could not start the script: {exc}") from exc
            raise
        start = await trio.to_thread.run_sync(process_start, proc.pid)
        return ScriptJobHandle(self, proc, spec, limits, job_dir=job_dir, home=home, uid=uid,
                               token=job_token(proc.pid, start or 0, uid))

    async def reap(self, token: str) -> int:
        """After a daemon restart: kill what is left of the job ``token`` names (its
        ``container_id``: a script job cannot be re-attached); how many processes were killed."""
        parsed = parse_token(token)
        if parsed is None:
            return 0
        return await trio.to_thread.run_sync(kill_leftovers, parsed[0], parsed[1])

    def _prepare(
        self, spec: JobSpec, limits: ResourceLimits, job_dir: Path, uid: int | None
    ) -> CappedFolder:
        """The job's folder: ``inputs`` (root's, read-only) and ``home`` (the job's, capped)."""
        owner = (uid, uid) if uid is not None else (os.getuid(), os.getgid())
        # job_dir stays the daemon's, 0700 (mkdtemp): only bwrap, started as root, looks in
        copy_inputs(spec.inputs, job_dir / "inputs")
        home = CappedFolder.create(job_dir / "home", limits.scratch_bytes,
                                   uid=owner[0], gid=owner[1], hard=self._hard_cap)
        for sub in ("tmp", "outputs", "inputs"):  # inputs: the mount point of the ro bind
            (home.path / sub).mkdir(mode=0o700)
        if spec.script is not None:
            (home.path / "job.sh").write_text(spec.script)
        for path in home.path.iterdir():
            os.chown(path, *owner, follow_symlinks=False)
        return home


class ScriptJobHandle:
    """A running script job; ``logs()`` has a single consumer."""

    def __init__(
        self,
        executor: ScriptExecutor,
        proc: SpawnedProcess,
        spec: JobSpec,
        limits: ResourceLimits,
        *,
        job_dir: Path,
        home: CappedFolder,
        uid: int | None,
        token: str,
    ) -> None:
        self._ex = executor
        #: recorded durably by the job service: a restarted daemon kills the job by it (``reap``)
        self.container_id = token
        self._proc = proc
        self.spec = spec
        self.limits = limits
        self._job_dir = job_dir
        self._home = home
        self.scratch = home.path  #: the job's folder on the host (``/job`` inside)
        self.uid = uid  #: the job's own host uid; None when the daemon is not root
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
        await wait_enforcing(
            self._proc.wait, deadline=self._deadline, grace_s=min(10.0, self.limits.time_limit_s),
            disk_full=self._home.wait_full, stop=self._stop_for,
        )
        code = await self._proc.wait()
        if self._stop_reason is None and await trio.to_thread.run_sync(self._home.full):
            self._stop_reason = ExitReason.OUTPUT_LIMIT  # filled it, then exited (ENOSPC)
        sig = -code if code < 0 else None
        if self._stop_reason is ExitReason.OUTPUT_LIMIT:
            status = ExitStatus(code, ExitReason.OUTPUT_LIMIT, f"output limit exceeded: the "
                                f"job's folder is capped at {self._home.cap} bytes")
        elif self._stop_reason is not None:
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
        await self._stop_for(ExitReason.CANCELLED, grace_s)

    async def _stop_for(self, reason: ExitReason, grace_s: float) -> None:
        self._stop_reason = self._stop_reason or reason
        await self._kill(grace_s)

    async def _kill(self, grace_s: float) -> None:
        with trio.CancelScope(shield=True):
            if grace_s > 0:
                # SIGTERM reaches the job's processes in its PID namespace (bwrap's init there
                # ignores it); SIGKILL to bwrap outside then takes the whole namespace down
                pids = await trio.to_thread.run_sync(namespace_pids, self._proc.pid)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGTERM)
                with trio.move_on_after(grace_s):
                    await self._proc.wait()
            self._signal_group(signal.SIGKILL)
            await self._proc.wait()

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def cleanup(self) -> None:
        """Kill anything left of the job, collect outputs, remove its folder, release its uid.
        Idempotent."""
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
                    await trio.to_thread.run_sync(
                        copy_outputs,
                        self.scratch / "outputs",
                        self.spec.output_dir,
                        self._ex.policy.max_output_bytes,
                    )
            finally:
                for pipe in (self._proc.stdout, self._proc.stderr):
                    if pipe is not None:
                        await pipe.aclose()
                await trio.to_thread.run_sync(_remove_job_dir, self._job_dir, self._home)
                if self.uid is not None:
                    self._ex.release_uid(self.uid)  # acquire() skips it while a process lives


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


def job_token(pid: int, start: int, uid: int | None) -> str:
    """What names a script job's processes for good: bwrap's pid and start time, the job's uid."""
    return f"script:{pid}:{start}:{'' if uid is None else uid}"


def parse_token(token: str) -> tuple[int, int] | None:
    """(bwrap's pid, its start time) from a :func:`job_token`; None for anything else."""
    kind, _, rest = token.partition(":")
    parts = rest.split(":")
    if kind != "script" or len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def _sweep(scratch_root: Path) -> None:
    for entry in scratch_root.glob("job-*"):
        _remove_job_dir(entry, CappedFolder(entry / "home", 0, os.path.ismount(entry / "home")))


def _remove_job_dir(job_dir: Path, home: CappedFolder | None) -> None:
    if home is not None:
        home.remove()
    shutil.rmtree(job_dir, ignore_errors=True)
