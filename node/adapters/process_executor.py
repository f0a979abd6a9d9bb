"""A minimal local process executor: runs a job's script with ``/bin/sh`` in a scratch folder.

Stand-in until the execution layer's script executor is used everywhere; it implements the
same :class:`~dgpu.node.adapters.executor.Executor` protocol. Isolation is **weak**: a child
process of the node with a scrubbed environment (only ``PATH``, ``HOME`` and the job's own
variables — never the daemon's, which may hold secrets), its own process group, a scratch
directory as ``HOME`` and working directory, and ``RLIMIT_AS``/``RLIMIT_NPROC``/``RLIMIT_FSIZE``
limits. Use Docker for anything untrusted.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from dgpu.node.adapters.executor import (
    ExitReason,
    ExitStatus,
    Isolation,
    JobSpec,
    LogChunk,
    ResourceLimits,
    split_lines,
)
from dgpu.node.errors import ExecutorFailure, JobSpecInvalid

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["ProcessExecutor", "ProcessJob"]

_MAX_CHUNK = 8 * 1024  # bytes per log chunk: fits a LogChunk frame with room to spare
_LOG_QUEUE = 256  # chunks buffered before the job's output blocks (backpressure, bounded)


class ProcessJob:
    """A running script. ``logs()`` has one consumer; ``cleanup()`` is idempotent."""

    def __init__(self, spec: JobSpec, limits: ResourceLimits, proc: trio.Process,
                 scratch: Path, nursery: trio.Nursery) -> None:
        self._spec = spec
        self._limits = limits
        self._proc = proc
        self._scratch = scratch
        self._send, self._recv = trio.open_memory_channel[LogChunk](_LOG_QUEUE)
        self._seq = 0
        self._readers_done = 0
        self._cancelled = False
        self._timed_out = False
        self._lock = trio.Lock()  # seq numbering across the two reader tasks
        nursery.start_soon(self._pump, proc.stdout, "stdout")
        nursery.start_soon(self._pump, proc.stderr, "stderr")

    @property
    def job_id(self) -> str:
        return self._spec.job_id

    async def _pump(self, stream: trio.abc.ReceiveStream | None, name: str) -> None:
        buf = bytearray()
        try:
            if stream is None:
                return
            while True:
                try:
                    data = await stream.receive_some(64 * 1024)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    break
                for piece in split_lines(buf, bytes(data), _MAX_CHUNK):
                    await self._emit(name, piece)
            if buf:
                await self._emit(name, bytes(buf))
        finally:
            self._readers_done += 1
            if self._readers_done == 2:
                await self._send.aclose()

    async def _emit(self, name: str, data: bytes) -> None:
        async with self._lock:
            chunk = LogChunk(seq=self._seq, stream=name, data=data)  # type: ignore[arg-type]
            self._seq += 1
            await self._send.send(chunk)

    async def logs(self) -> AsyncIterator[LogChunk]:
        async for chunk in self._recv:
            yield chunk

    async def wait(self) -> ExitStatus:
        with trio.move_on_after(self._limits.time_limit_s) as scope:
            code = await self._proc.wait()
        if scope.cancelled_caught:
            self._timed_out = True
            await self.stop(grace_s=2)
            code = await self._proc.wait()
        if self._timed_out:
            return ExitStatus(code, ExitReason.TIMEOUT, "time limit reached")
        if self._cancelled:
            return ExitStatus(code, ExitReason.CANCELLED, "stopped on request")
        if code == 0:
            return ExitStatus(0, ExitReason.FINISHED)
        return ExitStatus(code, ExitReason.FAILED, f"exit code {code}")

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    async def stop(self, grace_s: float = 10.0) -> None:
        self._cancelled = True
        if self._proc.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        with trio.move_on_after(grace_s):
            await self._proc.wait()
            return
        self._signal(signal.SIGKILL)
        await self._proc.wait()

    async def cleanup(self) -> None:
        if self._proc.returncode is None:
            with trio.CancelScope(shield=True):
                await self.stop(grace_s=1)
        await trio.to_thread.run_sync(shutil.rmtree, self._scratch, True)


class ProcessExecutor:
    """Runs ``script`` jobs as local processes (weak isolation). Start jobs inside ``run()``."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self._base = base_dir
        self._nursery: trio.Nursery | None = None

    @property
    def kind(self) -> str:
        return "script"

    @property
    def isolation(self) -> Isolation:
        return "weak"

    async def run(self, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the log-reader tasks of every job (cancelled with the node)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> ProcessJob:
        if self._nursery is None:
            raise ExecutorFailure("the process executor is not running")
        if spec.script is None:
            raise JobSpecInvalid("the process executor runs scripts only")
        scratch = Path(tempfile.mkdtemp(prefix=f"dgpu-job-{spec.job_id[:12]}-", dir=self._base))
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(scratch), "LANG": "C.UTF-8"}
        env.update(spec.env)

        def limit_child() -> None:  # runs in the child between fork and exec
            mem = limits.memory_bytes
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.scratch_bytes, limits.scratch_bytes))

        try:
            proc = await trio.lowlevel.open_process(
                ["/bin/sh", "-c", spec.script, "dgpu-job", *spec.command],
                cwd=str(scratch), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,  # own group: stop() kills all
                preexec_fn=limit_child,
            )
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ExecutorFailure(f"cannot start the job: {exc.strerror}") from None
        return ProcessJob(spec, limits, proc, scratch, self._nursery)
