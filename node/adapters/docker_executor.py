"""Run jobs in isolated Docker containers (docker SDK, blocking calls in worker threads).

Rules, each enforced in :meth:`DockerExecutor._create`:
- the image is present locally, or pulled only if the provider's :class:`DockerPolicy`
  lists it (exact reference or registry prefix);
- GPUs by device request for the job's UUIDs only; none otherwise;
- ``network_mode="none"`` unless the job asks *and* the policy allows;
- memory (no swap), CPU, pids limits; read-only root; a tmpfs ``/tmp`` scratch; every
  capability dropped; ``no-new-privileges``; a non-root user (``65534:65534`` by default);
  an init (tini) as PID 1 so SIGTERM reaches the job;
- the environment is the job spec's only (never the daemon's);
- inputs bind-mounted read-only at ``/inputs``, a writable ``/outputs`` copied out at the end
  (regular files only, symlinks skipped, bounded by ``max_output_bytes``);
- labels ``dgpu.job_id``, ``dgpu.rental_id``, ``dgpu.instance`` so a restarted daemon finds
  its containers (:meth:`DockerExecutor.list_jobs`, :meth:`DockerExecutor.reattach`).

Threads: short API calls run behind ``api_limiter`` (8); the two long blocking calls per job
(log follow, wait) run behind ``stream_limiter`` (2 per concurrent job). The HTTP pool is
sized to both so no call waits on a pooled connection. docker/requests exceptions are
converted here into ``dgpu.node.errors``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions
import trio

from dgpu.node.adapters.executor import split_lines
from dgpu.node.errors import (
    ExecutorFailure,
    ExecutorUnavailable,
    ImageNotAllowed,
    ImageUnavailable,
    JobSpecInvalid,
)
from dgpu.node.ports.execution import (
    ContainerInfo,
    ExitReason,
    ExitStatus,
    Isolation,
    JobSpec,
    LogChunk,
    ResourceLimits,
    StreamName,
)

__all__ = ["ContainerInfo", "DockerExecutor", "DockerJobHandle", "DockerPolicy"]

T = TypeVar("T")

LABEL_JOB = "dgpu.job_id"
LABEL_RENTAL = "dgpu.rental_id"
LABEL_INSTANCE = "dgpu.instance"

#: one log chunk never exceeds this many bytes (a longer line is split)
MAX_LOG_CHUNK = 16 * 1024
_STREAMS: dict[int, StreamName] = {1: "stdout", 2: "stderr"}


@dataclass(frozen=True, slots=True)
class DockerPolicy:
    """What the provider allows. Built once from the node's config."""

    workspace_root: Path
    instance: str = "default"  #: label value separating this daemon's containers
    allowed_images: frozenset[str] = frozenset()  #: exact references that may be pulled
    allowed_registries: frozenset[str] = frozenset()  #: "ghcr.io/org/" style prefixes
    allow_network: bool = False
    run_as: str | None = "65534:65534"  #: None = the image's own USER
    max_limits: ResourceLimits = field(
        default_factory=lambda: ResourceLimits(
            memory_bytes=64 * 1024**3, cpus=64.0, pids=4096, time_limit_s=7 * 24 * 3600.0
        )
    )
    max_output_bytes: int = 1024**3
    max_concurrent_jobs: int = 16


def _registry_qualified(image: str) -> str:
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return "docker.io/" + (image if "/" in image else "library/" + image)


def pull_allowed(policy: DockerPolicy, image: str) -> bool:
    if image in policy.allowed_images:
        return True
    full = _registry_qualified(image)
    return any(full.startswith(_registry_qualified(p)) or full.startswith(p)
               for p in policy.allowed_registries)


def _parse_docker_time(value: str) -> float | None:
    """'2026-11-26T11:47:04.918957835Z' → unix seconds (None for the zero time)."""
    if not value or value.startswith("0001-"):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(head + "+00:00").timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


class DockerExecutor:
    """The Docker job executor. Create with :meth:`connect` (checks the engine answers)."""

    kind = "docker"
    isolation: Isolation = "container"

    def __init__(self, client: docker.DockerClient, policy: DockerPolicy) -> None:
        self._client = client
        self._api: Any = client.api
        self.policy = policy
        # short API calls (create, start, inspect, kill, remove): a few at a time is plenty
        self._api_limiter = trio.CapacityLimiter(8)
        # long blocking calls: each running job holds at most two (log follow + wait)
        self._stream_limiter = trio.CapacityLimiter(2 * policy.max_concurrent_jobs)

    @classmethod
    async def connect(cls, policy: DockerPolicy, base_url: str | None = None) -> DockerExecutor:
        """Connect to the engine (``DOCKER_HOST`` or the default socket); ping it."""

        def _connect() -> docker.DockerClient:
            pool = 8 + 2 * policy.max_concurrent_jobs + 2
            try:
                if base_url is not None:
                    client = docker.DockerClient(base_url=base_url, max_pool_size=pool)
                else:
                    client = docker.from_env(max_pool_size=pool)
                client.ping()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise ExecutorUnavailable(f"the Docker engine is not reachable: {exc}") from exc
            return client

        client = await trio.to_thread.run_sync(_connect)
        policy.workspace_root.mkdir(parents=True, exist_ok=True)
        return cls(client, policy)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._client.close)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(
            lambda: _converted(fn, *args, **kwargs), limiter=self._api_limiter
        )

    # --- start ---------------------------------------------------------------------------

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> DockerJobHandle:
        """Create and start the container. On any error nothing is left behind."""
        if spec.image is None:
            raise JobSpecInvalid("the Docker executor runs image jobs only")
        if spec.network and not self.policy.allow_network:
            raise JobSpecInvalid("this provider does not allow network access for jobs")
        limits = limits.clamp(self.policy.max_limits)
        await self._ensure_image(spec.image)
        workspace = self.policy.workspace_root / spec.job_id
        container_id: str | None = None
        try:
            await trio.to_thread.run_sync(self._prepare_workspace, spec, workspace)
            container_id = await self._call(self._create, spec, limits, workspace)
            handle = DockerJobHandle(
                self, container_id, spec=spec, limits=limits, workspace=workspace,
                started_at=time.time(),
            )
            await self._call(self._api.start, container_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                if container_id is not None:
                    await self._remove(container_id)
                await trio.to_thread.run_sync(_rmtree, workspace)
            raise
        return handle

    async def _ensure_image(self, image: str) -> None:
        def _check() -> bool:
            try:
                self._client.images.get(image)
            except docker.errors.ImageNotFound:
                return False
            return True

        if await self._call(_check):
            return
        if not pull_allowed(self.policy, image):
            raise ImageNotAllowed(f"image {image!r} is not present and not in the pull policy")
        try:
            await self._call(self._client.images.pull, image)
        except ExecutorFailure as exc:
            raise ImageUnavailable(f"image {image!r} could not be pulled: {exc}") from exc

    def _prepare_workspace(self, spec: JobSpec, workspace: Path) -> None:
        if workspace.exists():
            shutil.rmtree(workspace)
        (workspace / "inputs").mkdir(parents=True)
        outputs = workspace / "outputs"
        outputs.mkdir()
        for rel, source in spec.inputs.items():
            if not source.is_file():
                raise JobSpecInvalid(f"input {rel!r}: {source} is not a readable file")
            dest = workspace / "inputs" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            dest.chmod(0o444)
        uid_gid = _numeric_user(self.policy.run_as)
        if uid_gid is not None and os.geteuid() == 0:
            os.chown(outputs, *uid_gid)
        else:
            outputs.chmod(0o777)

    def _create(self, spec: JobSpec, limits: ResourceLimits, workspace: Path) -> str:
        device_requests = []
        if spec.gpu_uuids:
            device_requests.append(
                docker.types.DeviceRequest(
                    driver="nvidia", device_ids=list(spec.gpu_uuids), capabilities=[["gpu"]]
                )
            )
        network_mode = "bridge" if spec.network and self.policy.allow_network else "none"
        host_config = self._api.create_host_config(
            binds={
                str(workspace / "inputs"): {"bind": "/inputs", "mode": "ro"},
                str(workspace / "outputs"): {"bind": "/outputs", "mode": "rw"},
            },
            network_mode=network_mode,
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,  # equal to mem_limit: no swap
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={limits.scratch_bytes},mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            device_requests=device_requests or None,
            init=True,
            ulimits=[docker.types.Ulimit(name="nofile", soft=4096, hard=4096)],
        )
        created = self._api.create_container(
            image=spec.image,
            command=list(spec.command),
            environment=dict(spec.env),
            user=self.policy.run_as or "",
            labels={
                LABEL_JOB: spec.job_id,
                LABEL_RENTAL: spec.rental_id,
                LABEL_INSTANCE: self.policy.instance,
            },
            host_config=host_config,
            network_disabled=network_mode == "none",
            working_dir="/tmp",
        )
        return str(created["Id"])

    # --- restart support -----------------------------------------------------------------

    async def list_jobs(self) -> dict[str, ContainerInfo]:
        """This daemon's containers (by ``dgpu.instance`` label), keyed by job id."""

        def _list() -> dict[str, ContainerInfo]:
            found = {}
            for c in self._api.containers(
                all=True, filters={"label": f"{LABEL_INSTANCE}={self.policy.instance}"}
            ):
                info = self._inspect_sync(c["Id"])
                if info is not None:
                    found[info.job_id] = info
            return found

        return await self._call(_list)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        return await self._call(self._inspect_sync, container_id)

    def _inspect_sync(self, container_id: str) -> ContainerInfo | None:
        try:
            data = self._api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        labels = data["Config"].get("Labels") or {}
        state = data["State"]
        return ContainerInfo(
            container_id=data["Id"],
            job_id=labels.get(LABEL_JOB, ""),
            rental_id=labels.get(LABEL_RENTAL, ""),
            running=bool(state.get("Running")),
            started_at=_parse_docker_time(state.get("StartedAt", "")),
            finished_at=None
            if state.get("Running")
            else _parse_docker_time(state.get("FinishedAt", "")),
            exit_code=None if state.get("Running") else state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
        )

    async def reattach(
        self, spec: JobSpec, limits: ResourceLimits, info: ContainerInfo
    ) -> DockerJobHandle:
        """A handle on a container started by an earlier daemon (time limit kept)."""
        workspace = self.policy.workspace_root / spec.job_id
        started = info.started_at if info.started_at is not None else time.time()
        return DockerJobHandle(
            self,
            info.container_id,
            spec=spec,
            limits=limits.clamp(self.policy.max_limits),
            workspace=workspace,
            started_at=started,
        )

    async def remove(self, container_id: str) -> None:
        """Remove a container (force); absent is fine."""
        await self._remove(container_id)

    async def _remove(self, container_id: str) -> None:
        def _rm() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._api.remove_container(container_id, force=True, v=True)

        with contextlib.suppress(ExecutorFailure):
            await self._call(_rm)


class DockerJobHandle:
    """A running (or finished) container. ``logs()`` has a single consumer."""

    def __init__(
        self,
        executor: DockerExecutor,
        container_id: str,
        *,
        spec: JobSpec,
        limits: ResourceLimits,
        workspace: Path,
        started_at: float,
    ) -> None:
        self._ex = executor
        self.container_id = container_id
        self.spec = spec
        self.limits = limits
        self._workspace = workspace
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
        res = await trio.to_thread.run_sync(lambda: _converted(_open), limiter=limiter)
        buffers: dict[StreamName, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        seq = 0
        try:
            while True:
                frame = await _in_thread_abandonable(lambda: _converted(_frame, res), limiter)
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
        """Wait for the exit; at the time limit stop it (reason TIMEOUT). Idempotent."""
        if self._status is not None:
            return self._status
        with trio.move_on_at(self._deadline) as scope:
            await self._wait_exit()
        if scope.cancelled_caught:
            self._stop_reason = self._stop_reason or ExitReason.TIMEOUT
            await self._kill(grace_s=min(10.0, self.limits.time_limit_s))
            await self._wait_exit()
        info = await self._ex.inspect(self.container_id)
        if info is None:
            status = ExitStatus(None, ExitReason.FAILED, "the container vanished")
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
            lambda: _converted(_wait_once), self._ex._stream_limiter
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
            _copy_outputs,
            self._workspace / "outputs",
            self.spec.output_dir,
            self._ex.policy.max_output_bytes,
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
                await trio.to_thread.run_sync(_rmtree, self._workspace)


async def _in_thread_abandonable(fn: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
    """``trio.to_thread.run_sync(fn, abandon_on_cancel=True)``: on cancellation the thread is
    left to finish on its own (each caller makes sure it ends soon: a closed response, a
    5 s poll). Typed through Any because libp2p's trio-typing stubs predate the keyword."""
    run: Any = trio.to_thread.run_sync
    result: T = await run(fn, limiter=limiter, abandon_on_cancel=True)
    return result


def _converted(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` converting docker/requests errors into the node's tree (worker thread)."""
    try:
        return fn(*args, **kwargs)
    except docker.errors.ImageNotFound as exc:
        raise ImageUnavailable(str(exc)) from exc
    except docker.errors.APIError as exc:
        raise ExecutorFailure(f"Docker engine error: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise ExecutorFailure(f"Docker engine unreachable or failed: {exc}") from exc


def _numeric_user(run_as: str | None) -> tuple[int, int] | None:
    if run_as is None:
        return None
    uid, _, gid = run_as.partition(":")
    if uid.isdigit() and (gid or uid).isdigit():
        return int(uid), int(gid or uid)
    return None


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _copy_outputs(src: Path, dest: Path, max_bytes: int) -> list[Path]:
    """Copy regular files (no symlinks, no devices) up to ``max_bytes`` in total."""
    copied: list[Path] = []
    if not src.is_dir():
        return copied
    total = 0
    dest.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(src, followlinks=False):
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            if total + size > max_bytes:
                return copied
            total += size
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target, follow_symlinks=False)
            copied.append(target)
    return copied

