"""A running Docker job: log follow, wait with the limits enforced, stop, outputs, cleanup.

Split from :mod:`dgpu.node.adapters.docker_executor` (which starts containers and owns the
engine connection); a handle reaches the engine through its executor. docker/requests
exceptions are converted here (:func:`converted`) into ``dgpu.node.errors``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import docker
import docker.errors
import requests.exceptions
import trio

from dgpu.node.adapters.disk_cap import CappedFolder
from dgpu.node.adapters.executor import copy_outputs, split_lines, wait_enforcing
from dgpu.node.errors import ExecutorFailure, ImageUnavailable
from dgpu.node.ports.execution import (
    ContainerInfo,
    ExitReason,
    ExitStatus,
    JobSpec,
    LogChunk,
    ResourceLimits,
    StreamName,
)


class _Engine(Protocol):
    """What a handle uses of its executor (``DockerExecutor``); a protocol, so this module does
    not import the executor that imports it."""

    _api: Any
    _stream_limiter: trio.CapacityLimiter

    @property
    def max_output_bytes(self) -> int: ...

    async def inspect(self, container_id: str) -> ContainerInfo | None: ...

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def _remove(self, container_id: str) -> None: ...

__all__ = ["DockerJobHandle", "converted", "remove_workspace"]

T = TypeVar("T")

#: one log chunk never exceeds this many bytes (a longer line is split)
MAX_LOG_CHUNK = 16 * 1024
_STREAMS: dict[int, StreamName] = {1: "stdout", 2: "stderr"}


class DockerJobHandle:
    """A running (or finished) container. ``logs()`` has a single consumer."""

    def __init__(
        self,
        executor: _Engine,
        container_id: str,
        *,
        spec: JobSpec,
        limits: ResourceLimits,
        workspace: Path,
        outputs: CappedFolder,
        started_at: float,
    ) -> None:
        self._ex = executor
        self.container_id = container_id
        self.spec = spec
        self.limits = limits
        self._workspace = workspace
        self.outputs = outputs  #: the host folder bound at /outputs
        self.started_at = started_at  #: wall clock the container started (the meter's origin)
        remaining = limits.time_limit_s - max(0.0, time.time() - started_at)
        self._deadline = trio.current_time() + max(0.0, remaining)
        self._stop_reason: ExitReason | None = None
        self._status: ExitStatus | None = None
        self._cleaned = False
        self._outputs_collected = False

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def engine_api(self) -> Any:
        """The engine's low-level client (``docker exec`` for shells in the job)."""
        return self._ex._api

    async def namespace_pid(self) -> int | None:
        """Host PID of the container's init (its ``/proc/PID/ns/net`` is the job's network); None
        when it is not running."""
        state = await self._ex._call(lambda: self._ex._api.inspect_container(self.container_id)["State"])
        return int(state.get("Pid") or 0) or None if state.get("Running") else None

    async def logs(self) -> AsyncIterator[LogChunk]:
        """Follow stdout/stderr from the container's start, as lines, in order."""
        api = self._ex._api

        def _open() -> Any:
            # The SDK's logs() drops the stream id of each frame; read the frames ourselves.
            res = api._get(
                api._url("/containers/{0}/logs", self.container_id),
                params={"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 0},
                stream=True,
            )
            api._raise_for_status(res)
            api._disable_socket_timeout(api._get_raw_response_socket(res))
            return res

        def _frame(res: Any) -> tuple[int, bytes] | None:
            header = res.raw.read(8)
            if len(header) < 8:
                return None
            stream_id, length = struct.unpack(">BxxxL", header)
            data = res.raw.read(length) if length else b""
            return stream_id, data

        limiter = self._ex._stream_limiter
        res = await trio.to_thread.run_sync(lambda: converted(_open), limiter=limiter)
        buffers: dict[StreamName, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        seq = 0
        try:
            while True:
                frame = await _in_thread_abandonable(lambda: converted(_frame, res), limiter)
                if frame is None:
                    break
                stream = _STREAMS.get(frame[0], "stdout")
                for line in split_lines(buffers[stream], frame[1], MAX_LOG_CHUNK):
                    yield LogChunk(seq, stream, line)
                    seq += 1
            for stream, rest in buffers.items():
                if rest:
                    yield LogChunk(seq, stream, bytes(rest))
                    seq += 1
        finally:
            res.close()  # unblocks an abandoned reader thread

    async def wait(self) -> ExitStatus:
        """Wait for the exit; at the time limit stop it (reason TIMEOUT), when it fills
        ``/outputs`` kill it (reason OUTPUT_LIMIT). Idempotent."""
        if self._status is not None:
            return self._status
        await wait_enforcing(
            self._wait_exit, deadline=self._deadline, grace_s=min(10.0, self.limits.time_limit_s),
            disk_full=self.outputs.wait_full, stop=self._stop_for,
        )
        if self._stop_reason is None and await trio.to_thread.run_sync(self.outputs.full):
            self._stop_reason = ExitReason.OUTPUT_LIMIT  # filled it, then exited (ENOSPC)
        info = await self._ex.inspect(self.container_id)
        if info is None:
            status = ExitStatus(None, ExitReason.FAILED, "the container vanished")
        elif self._stop_reason is ExitReason.OUTPUT_LIMIT:
            status = ExitStatus(info.exit_code, ExitReason.OUTPUT_LIMIT, "output limit exceeded:"
                                f" /outputs is capped at {self.outputs.cap} bytes")
        elif self._stop_reason is not None:
            status = ExitStatus(info.exit_code, self._stop_reason)
        elif info.oom_killed:
            status = ExitStatus(info.exit_code, ExitReason.OOM, "memory limit exceeded")
        elif info.exit_code == 0:
            status = ExitStatus(0, ExitReason.FINISHED)
        else:
            status = ExitStatus(info.exit_code, ExitReason.FAILED, f"exit code {info.exit_code}")
        self._status = status
        return status

    async def _stop_for(self, reason: ExitReason, grace_s: float) -> None:
        self._stop_reason = self._stop_reason or reason
        await self._kill(grace_s)

    async def _wait_exit(self) -> None:
        api = self._ex._api

        def _wait_once() -> bool:
            try:
                api.wait(self.container_id, timeout=5)
            except docker.errors.NotFound:
                return True
            except (requests.exceptions.Timeout, requests.exceptions.ConnectionError):
                return False  # our 5 s poll ran out (urllib3 reports it either way)
            return True

        while not await _in_thread_abandonable(
            lambda: converted(_wait_once), self._ex._stream_limiter
        ):
            pass

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, ``grace_s`` seconds, SIGKILL. ``wait`` then reports CANCELLED."""
        self._stop_reason = self._stop_reason or ExitReason.CANCELLED
        await self._kill(grace_s)

    async def _kill(self, grace_s: float) -> None:
        api = self._ex._api

        def _stop() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                api.stop(self.container_id, timeout=max(0, round(grace_s)))

        with trio.CancelScope(shield=True):
            await self._ex._call(_stop)

    async def collect_outputs(self) -> list[Path]:
        """Copy regular files from ``/outputs`` to ``spec.output_dir`` (once)."""
        if self._outputs_collected or self.spec.output_dir is None:
            return []
        self._outputs_collected = True
        return await trio.to_thread.run_sync(
            copy_outputs,
            self._workspace / "outputs",
            self.spec.output_dir,
            self._ex.max_output_bytes,
        )

    async def cleanup(self) -> None:
        """Collect outputs, remove the container and the workspace. Idempotent."""
        if self._cleaned:
            return
        with trio.CancelScope(shield=True):
            try:
                await self.collect_outputs()
            finally:
                self._cleaned = True
                await self._ex._remove(self.container_id)
                await trio.to_thread.run_sync(remove_workspace, self._workspace)


async def _in_thread_abandonable(fn: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
    """``trio.to_thread.run_sync(fn, abandon_on_cancel=True)``: on cancellation the thread is
    left to finish on its own (each caller makes sure it ends soon: a closed response, a
    5 s poll). Typed through Any because libp2p's trio-typing stubs predate the keyword."""
    run: Any = trio.to_thread.run_sync
    result: T = await run(fn, limiter=limiter, abandon_on_cancel=True)
    return result


def converted(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` converting docker/requests errors into the node's tree (worker thread)."""
    try:
        return fn(*args, **kwargs)
    except docker.errors.ImageNotFound as exc:
        raise ImageUnavailable(str(exc)) from exc
    except docker.errors.APIError as exc:
        raise ExecutorFailure(f"Docker engine error: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise ExecutorFailure(f"Docker engine unreachable or failed: {exc}") from exc


def remove_workspace(workspace: Path) -> None:
    """Unmount a capped ``outputs`` (rmtree cannot remove a mount point), then delete."""
    CappedFolder(workspace / "outputs", 0, os.path.ismount(workspace / "outputs")).remove()
    shutil.rmtree(workspace, ignore_errors=True)
