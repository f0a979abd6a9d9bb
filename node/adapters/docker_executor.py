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
- disk: every place a job can write is capped. ``/outputs`` is a host tmpfs of
  ``max_output_bytes`` when the daemon can mount (else a watched folder plus an ``fsize``
  ulimit, see :mod:`dgpu.node.adapters.disk_cap`); a job that fills it is stopped
  (``ExitReason.OUTPUT_LIMIT``). ``/tmp``, ``/dev/shm`` and every ``VOLUME`` the image declares
  are sized tmpfs (an anonymous volume would be uncapped host disk); the log file the engine
  keeps is rotated at :data:`LOG_MAX_BYTES` x :data:`LOG_FILES`;
- labels ``dgpu.job_id``, ``dgpu.rental_id``, ``dgpu.instance`` so a restarted daemon finds
  its containers (:meth:`DockerExecutor.list_jobs`, :meth:`DockerExecutor.reattach`).

Threads: short API calls run behind ``api_limiter`` (8); the two long blocking calls per job
(log follow, wait) run behind ``stream_limiter`` (2 per concurrent job). The HTTP pool is
sized to both so no call waits on a pooled connection. docker/requests exceptions are
converted into ``dgpu.node.errors`` by :func:`dgpu.node.adapters.docker_job.converted`. The
running job's handle lives in :mod:`dgpu.node.adapters.docker_job`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions
import trio

from dgpu.node.adapters.disk_cap import CappedFolder, can_mount_tmpfs, same_mount_namespace
from dgpu.node.adapters.docker_job import DockerJobHandle, converted, remove_workspace
from dgpu.node.adapters.executor import copy_inputs
from dgpu.node.errors import (
    ExecutorFailure,
    ExecutorUnavailable,
    ImageNotAllowed,
    ImageUnavailable,
    JobSpecInvalid,
)
from dgpu.node.ports.execution import ContainerInfo, Isolation, JobSpec, ResourceLimits

__all__ = ["ContainerInfo", "DockerExecutor", "DockerJobHandle", "DockerPolicy"]

T = TypeVar("T")

LABEL_JOB = "dgpu.job_id"
LABEL_RENTAL = "dgpu.rental_id"
LABEL_INSTANCE = "dgpu.instance"

#: the engine's json-file log of a job is rotated at this size, keeping this many files (a
#: reader that falls this far behind a log flood loses the oldest lines, not the disk)
LOG_MAX_BYTES = 64 * 1024**2
LOG_FILES = 2


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


#: what a job's GPUs may do: CUDA compute and nvidia-smi (not graphics, video or display)
GPU_CAPABILITIES = [["compute", "utility"]]


def gpu_device_requests(uuids: tuple[str, ...]) -> list[docker.types.DeviceRequest]:
    """The device request that gives a container exactly ``uuids`` (none: no GPU at all)."""
    if not uuids:
        return []
    return [docker.types.DeviceRequest(driver="nvidia", device_ids=list(uuids), capabilities=GPU_CAPABILITIES)]


class DockerExecutor:
    """The Docker job executor. Create with :meth:`connect` (checks the engine answers)."""

    kind = "docker"
    isolation: Isolation = "container"

    def __init__(
        self, client: docker.DockerClient, policy: DockerPolicy, *, hard_cap: bool = False
    ) -> None:
        self._client = client
        self._api: Any = client.api
        self.policy = policy
        self._hard_cap = hard_cap  #: /outputs is a tmpfs of max_output_bytes (else watched)
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
        policy.workspace_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        policy.workspace_root.chmod(0o700)  # job folders: the daemon's (the engine is root)
        hard = await trio.to_thread.run_sync(can_mount_tmpfs) and same_mount_namespace(
            Path("/var/run/docker.pid")
        )
        return cls(client, policy, hard_cap=hard)

    async def has_nvidia_runtime(self) -> bool:
        """The engine lists the NVIDIA runtime (nvidia-container-toolkit), which GPU jobs need."""
        info = await self._call(self._client.info)
        return "nvidia" in (info.get("Runtimes") or {})

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._client.close)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(
            lambda: converted(fn, *args, **kwargs), limiter=self._api_limiter
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
            outputs = await trio.to_thread.run_sync(self._prepare_workspace, spec, workspace)
            container_id = await self._call(self._create, spec, limits, workspace, outputs)
            handle = DockerJobHandle(
                self, container_id, spec=spec, limits=limits, workspace=workspace,
                outputs=outputs, started_at=time.time(),
            )
            await self._call(self._api.start, container_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                if container_id is not None:
                    await self._remove(container_id)
                await trio.to_thread.run_sync(remove_workspace, workspace)
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

    def _prepare_workspace(self, spec: JobSpec, workspace: Path) -> CappedFolder:
        """``workspace`` (0700, the daemon's) with ``inputs`` (read-only copies) and ``outputs``
        (the job user's, capped at ``max_output_bytes``)."""
        if workspace.exists():
            remove_workspace(workspace)
        workspace.mkdir(mode=0o700)
        workspace.chmod(0o700)
        copy_inputs(spec.inputs, workspace / "inputs")
        uid_gid = _numeric_user(self.policy.run_as)
        root = os.geteuid() == 0
        if uid_gid is not None and root:
            uid, gid = uid_gid
            mode = 0o700
        else:  # the image's own user (or a non-root daemon): any uid must write there
            uid, gid, mode = os.getuid(), os.getgid(), 0o777
        return CappedFolder.create(workspace / "outputs", self.policy.max_output_bytes,
                                   uid=uid, gid=gid, mode=mode, hard=self._hard_cap)

    def _create(
        self, spec: JobSpec, limits: ResourceLimits, workspace: Path, outputs: CappedFolder
    ) -> str:
        device_requests = gpu_device_requests(spec.gpu_uuids)
        network_mode = "bridge" if spec.network and self.policy.allow_network else "none"
        ulimits = [docker.types.Ulimit(name="nofile", soft=4096, hard=4096)]
        if not outputs.mounted:  # the soft cap: no single file past it between two samples
            ulimits.append(docker.types.Ulimit(name="fsize", soft=outputs.cap, hard=outputs.cap))
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
            tmpfs=self._tmpfs(spec.image or "", limits),
            shm_size=min(limits.scratch_bytes, 64 * 1024**2),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            device_requests=device_requests or None,
            init=True,
            ulimits=ulimits,
            log_config=docker.types.LogConfig(
                type="json-file",
                config={"max-size": str(LOG_MAX_BYTES), "max-file": str(LOG_FILES)},
            ),
        )
        created = self._api.create_container(
            image=spec.image,
            command=list(spec.command),
            environment=spec.job_env(),
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

    def _tmpfs(self, image: str, limits: ResourceLimits) -> dict[str, str]:
        """``/tmp`` and each ``VOLUME`` of the image as a sized tmpfs (blocking)."""
        spec = f"rw,nosuid,nodev,size={limits.scratch_bytes},mode=1777"
        declared = self._api.inspect_image(image).get("Config", {}).get("Volumes") or {}
        mounts = {str(path): spec for path in declared if path not in ("/inputs", "/outputs")}
        mounts["/tmp"] = spec
        return mounts

    # --- restart support -----------------------------------------------------------------

    async def list_jobs(self) -> dict[str, ContainerInfo]:
        """This daemon's containers (by ``dgpu.instance`` label), keyed by job id.

        Called at start-up (reconcile), before any job starts: a workspace no container has
        is what a crashed daemon left (a capped ``outputs`` is a tmpfs holding memory), and
        is removed."""

        def _list() -> dict[str, ContainerInfo]:
            found = {}
            for c in self._api.containers(
                all=True, filters={"label": f"{LABEL_INSTANCE}={self.policy.instance}"}
            ):
                info = self._inspect_sync(c["Id"])
                if info is not None:
                    found[info.job_id] = info
            return found

        found = await self._call(_list)

        def _sweep() -> None:
            for entry in self.policy.workspace_root.iterdir():
                if entry.name not in found:
                    remove_workspace(entry)

        await trio.to_thread.run_sync(_sweep)
        return found

    @property
    def max_output_bytes(self) -> int:
        return self.policy.max_output_bytes

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
        outputs = workspace / "outputs"
        mounted = await trio.to_thread.run_sync(os.path.ismount, outputs)
        return DockerJobHandle(
            self,
            info.container_id,
            spec=spec,
            limits=limits.clamp(self.policy.max_limits),
            workspace=workspace,
            outputs=CappedFolder(outputs, self.policy.max_output_bytes, mounted),
            started_at=started,
        )

    async def remove(self, container_id: str) -> None:
        """Remove a container (force) and its job's workspace; absent is fine."""
        info = await self.inspect(container_id)
        await self._remove(container_id)
        if info is not None and info.job_id:
            await trio.to_thread.run_sync(
                remove_workspace, self.policy.workspace_root / info.job_id
            )

    async def _remove(self, container_id: str) -> None:
        def _rm() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._api.remove_container(container_id, force=True, v=True)

        with contextlib.suppress(ExecutorFailure):
            await self._call(_rm)


def _numeric_user(run_as: str | None) -> tuple[int, int] | None:
    if run_as is None:
        return None
    uid, _, gid = run_as.partition(":")
    if uid.isdigit() and (gid or uid).isdigit():
        return int(uid), int(gid or uid)
    return None
