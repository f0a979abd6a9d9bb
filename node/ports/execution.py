"""The executor port: what every job executor (Docker, script) implements, and the types they share.

Theory of operation: the job service turns an accepted job into a :class:`JobSpec`
(what the renter asked for) and :class:`ResourceLimits` (what the provider enforces,
already clamped by its policy), then calls ``Executor.start(spec, limits)`` and gets a
:class:`JobHandle`. The handle gives one ordered log stream (:meth:`JobHandle.logs`, a
single consumer), :meth:`JobHandle.wait` (enforces the time limit and returns an
:class:`ExitStatus`), :meth:`JobHandle.stop` (SIGTERM, grace period, SIGKILL) and
:meth:`JobHandle.cleanup` (removes the container / scratch; idempotent; always called).
An executor whose jobs outlive the daemon (Docker) is also a :class:`ReattachableExecutor`:
after a restart the job service lists its jobs and re-attaches or removes them.

``JobSpec.gpu_uuids`` are the GPUs of the agreement's lease (``services.inventory``): the
executor exposes exactly those to the job and the meter samples exactly those.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol, runtime_checkable

from dgpu.node.errors import JobSpecInvalid

#: the variables CUDA and the NVIDIA container runtime read to pick the visible GPUs
_GPU_VISIBILITY = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")

__all__ = [
    "ContainerInfo",
    "Executor",
    "ExitReason",
    "ExitStatus",
    "Isolation",
    "JobHandle",
    "JobSpec",
    "LogChunk",
    "ReapingExecutor",
    "ReattachableExecutor",
    "ResourceLimits",
    "StreamName",
]

Isolation = Literal["container", "weak"]
StreamName = Literal["stdout", "stderr"]


class ExitReason(enum.StrEnum):
    """Why a job's process ended."""

    FINISHED = "finished"  #: exit code 0
    FAILED = "failed"  #: non-zero exit code, or the engine lost the job
    TIMEOUT = "timeout"  #: killed at its time limit (wall clock, or CPU time for scripts)
    OOM = "oom"  #: killed by the kernel for exceeding its memory limit
    CANCELLED = "cancelled"  #: stopped on request (renter cancel, escrow exhausted, shutdown)
    OUTPUT_LIMIT = "output_limit"  #: filled the disk space it may write (outputs, scratch)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    exit_code: int | None  #: None when the process never reported one (vanished)
    reason: ExitReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LogChunk:
    """One line (or a line's piece when a line exceeds the chunk bound) of job output."""

    seq: int  #: 0, 1, 2, ... in the order the executor read them, across both streams
    stream: StreamName
    data: bytes  #: includes the trailing b"\n" when the line had one


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Limits the executor enforces; every field is a hard cap."""

    memory_bytes: int = 512 * 1024 * 1024
    cpus: float = 1.0
    pids: int = 256
    time_limit_s: float = 3600.0
    scratch_bytes: int = 256 * 1024 * 1024  #: /tmp tmpfs size (Docker) / the job's folder (script)

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0 or self.cpus <= 0 or self.pids <= 0:
            raise JobSpecInvalid("limits must be positive")
        if self.time_limit_s <= 0 or self.scratch_bytes <= 0:
            raise JobSpecInvalid("limits must be positive")

    def clamp(self, cap: ResourceLimits) -> ResourceLimits:
        """The tighter of ``self`` (asked) and ``cap`` (the provider's maximum), per field."""
        return ResourceLimits(
            memory_bytes=min(self.memory_bytes, cap.memory_bytes),
            cpus=min(self.cpus, cap.cpus),
            pids=min(self.pids, cap.pids),
            time_limit_s=min(self.time_limit_s, cap.time_limit_s),
            scratch_bytes=min(self.scratch_bytes, cap.scratch_bytes),
        )


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a renter asked to run. Exactly one of ``image`` / ``script`` is set.

    ``inputs`` maps a relative path under ``/inputs`` (in the job) to a local file the
    caller has already fetched (content ids are resolved by the blob layer before start).
    ``output_dir`` is a host folder; files the job writes under ``/outputs`` (Docker) or
    ``$HOME/outputs`` (script) are copied there when the job ends.
    """

    job_id: str
    rental_id: str
    command: tuple[str, ...] = ()
    image: str | None = None
    script: str | None = None  #: shell script text, run by ``/bin/sh`` (script executor)
    #: may hold the renter's secrets: kept out of repr (logs, errors) and dropped from the
    #: provider's database when the job ends (see Store.transition)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    inputs: Mapping[str, Path] = field(default_factory=dict)
    output_dir: Path | None = None
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    network: bool = False  #: the renter wants network access (the provider may refuse)
    gpu_uuids: tuple[str, ...] = ()

    def job_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """What a job's process sees: ``base``, the spec's ``env``, then ``CUDA_VISIBLE_DEVICES``
        and ``NVIDIA_VISIBLE_DEVICES`` = the leased UUIDs (or nothing), last so the renter's own
        values never widen the lease."""
        env = {**(base or {}), **self.env}
        for name in _GPU_VISIBILITY:
            env.pop(name, None)
            if self.gpu_uuids:
                env[name] = ",".join(self.gpu_uuids)
        return env

    def __post_init__(self) -> None:
        if not self.job_id or not self.rental_id:
            raise JobSpecInvalid("job_id and rental_id are required")
        if (self.image is None) == (self.script is None):
            raise JobSpecInvalid("exactly one of image or script must be given")
        if self.image is not None and not self.command:
            raise JobSpecInvalid("an image job needs a command")
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                raise JobSpecInvalid(f"bad environment variable name {key!r}")
        for rel in self.inputs:
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts or not p.parts:
                raise JobSpecInvalid(f"input path must be relative and inside /inputs: {rel!r}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (stored with the job so a restarted daemon knows the spec)."""
        return {
            "job_id": self.job_id,
            "rental_id": self.rental_id,
            "command": list(self.command),
            "image": self.image,
            "script": self.script,
            "env": dict(self.env),
            "inputs": {k: str(v) for k, v in self.inputs.items()},
            "output_dir": str(self.output_dir) if self.output_dir is not None else None,
            "limits": {
                "memory_bytes": self.limits.memory_bytes,
                "cpus": self.limits.cpus,
                "pids": self.limits.pids,
                "time_limit_s": self.limits.time_limit_s,
                "scratch_bytes": self.limits.scratch_bytes,
            },
            "network": self.network,
            "gpu_uuids": list(self.gpu_uuids),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobSpec:
        return cls(
            job_id=d["job_id"],
            rental_id=d["rental_id"],
            command=tuple(d["command"]),
            image=d["image"],
            script=d["script"],
            env=dict(d["env"]),
            inputs={k: Path(v) for k, v in d["inputs"].items()},
            output_dir=Path(d["output_dir"]) if d["output_dir"] is not None else None,
            limits=ResourceLimits(**d["limits"]),
            network=bool(d["network"]),
            gpu_uuids=tuple(d["gpu_uuids"]),
        )


@runtime_checkable
class JobHandle(Protocol):
    """A started job. ``logs`` has one consumer; ``cleanup`` is idempotent."""

    @property
    def job_id(self) -> str: ...

    def logs(self) -> AsyncIterator[LogChunk]:
        """Ordered output; ends when the job's output ends (after it exits)."""
        ...

    async def wait(self) -> ExitStatus:
        """Wait for the end, enforcing the time limit (timeout → stop → TIMEOUT).

        The limit is enforced here: run it concurrently with :meth:`logs`."""
        ...

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, wait ``grace_s``, then SIGKILL; :meth:`wait` then reports CANCELLED."""
        ...

    async def cleanup(self) -> None:
        """Collect outputs (if not done), remove the container / scratch. Idempotent."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Starts jobs. ``isolation`` is what offers advertise ("weak" for the script runner)."""

    @property
    def kind(self) -> str: ...

    @property
    def isolation(self) -> Isolation: ...

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> JobHandle: ...


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A job container of this daemon found after a restart (by label, in Docker)."""

    container_id: str
    job_id: str
    rental_id: str
    running: bool
    started_at: float | None  #: wall clock
    finished_at: float | None  #: wall clock; None while running
    exit_code: int | None
    oom_killed: bool


@runtime_checkable
class ReattachableExecutor(Executor, Protocol):
    """An executor whose jobs survive a daemon restart (Docker containers)."""

    async def list_jobs(self) -> dict[str, ContainerInfo]:
        """This daemon's job containers, by job id."""
        ...

    async def reattach(self, spec: JobSpec, limits: ResourceLimits, info: ContainerInfo) -> JobHandle:
        """A handle on a container started by an earlier daemon (time limit kept)."""
        ...

    async def remove(self, container_id: str) -> None:
        """Remove a container (force); absent is fine."""
        ...


@runtime_checkable
class ReapingExecutor(Executor, Protocol):
    """An executor whose jobs cannot be re-attached after a daemon restart, but can be found and
    stopped (script jobs: their sandbox's process, named by pid and start time)."""

    async def reap(self, token: str) -> int:
        """Kill what is left of the job whose handle's ``container_id`` was ``token``; how many
        processes were killed (0: nothing was left)."""
        ...
