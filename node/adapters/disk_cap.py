"""A folder a job writes into, capped in bytes, shared by the Docker and script executors.

Two ways, chosen once per daemon (:func:`can_mount_tmpfs`):
- hard: the daemon can mount (root with ``CAP_SYS_ADMIN``): the folder is a tmpfs of exactly
  ``cap`` bytes mounted on the host; the kernel refuses the write past it (``ENOSPC``), so the
  host never holds more than the cap. Its pages count against the writer's memory cgroup.
- soft: otherwise a plain folder whose size a watcher samples (:meth:`CappedFolder.wait_full`);
  between two samples a job can write past it, so executors add a per-file size rlimit too.

Either way :meth:`CappedFolder.full` says the job hit the cap, and the executor stops it with
``ExitReason.OUTPUT_LIMIT``. :meth:`CappedFolder.remove` unmounts and deletes (idempotent).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from dgpu.node.errors import ExecutorFailure

__all__ = ["CappedFolder", "can_mount_tmpfs", "remove_tree", "same_mount_namespace"]

_PAGE = os.sysconf("SC_PAGE_SIZE")
#: how often the watcher samples a folder's use (a soft folder's overshoot is bounded by this)
POLL_S = 0.5


def same_mount_namespace(pid_file: Path) -> bool:
    """Whether the process in ``pid_file`` (a local Docker engine) sees our mounts: a tmpfs we
    mount under a bind source reaches a container only then. Unknown (no such file) → True."""
    try:
        pid = int(pid_file.read_text().strip())
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False


@functools.cache
def can_mount_tmpfs() -> bool:
    """Whether this process can mount a tmpfs (tried once, on a throwaway folder)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="dgpu-cap-probe-"))
    try:
        if _mount(probe, _PAGE, os.getuid(), os.getgid(), 0o700) is not None:
            return False
        _umount(probe)
        return True
    finally:
        probe.rmdir()


def _mount(path: Path, size: int, uid: int, gid: int, mode: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes on ``path``; None on success, else the error text."""
    options = f"size={size},mode={mode:o},uid={uid},gid={gid},nosuid,nodev"
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "dgpu-job", str(path)],
            capture_output=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()


def _umount(path: Path) -> None:
    # lazy: a straggling reader (an abandoned copy) must not keep the memory pinned forever
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


@dataclass(slots=True)
class CappedFolder:
    path: Path
    cap: int  #: bytes the job may store here, in total
    mounted: bool  #: True: a tmpfs of ``cap`` bytes (hard); False: a watched plain folder

    @classmethod
    def create(
        cls, path: Path, cap: int, *, uid: int, gid: int, hard: bool, mode: int = 0o700
    ) -> CappedFolder:
        """Make ``path`` (``mode``, owned by ``uid:gid``), as a tmpfs when ``hard``. Blocking."""
        path.mkdir(mode=0o700)
        if hard:
            error = _mount(path, cap, uid, gid, mode)
            if error is not None:
                path.rmdir()
                raise ExecutorFailure(f"could not mount a {cap}-byte tmpfs on {path}: {error}")
        else:
            if (uid, gid) != (os.getuid(), os.getgid()):
                os.chown(path, uid, gid)
            path.chmod(mode)
        return cls(path, cap, hard)

    def used(self) -> int:
        """Bytes stored (a tmpfs: its used blocks; a plain folder: the sizes of its files)."""
        if self.mounted:
            st = os.statvfs(self.path)
            return (st.f_blocks - st.f_bfree) * st.f_frsize
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    continue  # deleted meanwhile
        return total

    def full(self) -> bool:
        """The job hit the cap (a tmpfs with less than a page left, or a folder over it)."""
        try:
            if self.mounted:
                st = os.statvfs(self.path)
                return st.f_bavail * st.f_frsize < _PAGE
            return self.used() > self.cap
        except OSError:
            return False  # removed: nothing more can be written

    async def wait_full(self) -> None:
        """Return once :meth:`full` (sampled every ``POLL_S``); cancel to stop watching."""
        while not await trio.to_thread.run_sync(self.full):
            await trio.sleep(POLL_S)

    def remove(self) -> None:
        """Unmount (if mounted) and delete the folder and what is in it. Idempotent."""
        if self.mounted and os.path.ismount(self.path):
            _umount(self.path)
        shutil.rmtree(self.path, ignore_errors=True)


def remove_tree(root: Path) -> None:
    """Delete ``root`` after unmounting every capped folder below it (what a killed daemon
    left mounted; its successor's start-up sweep does the same for its own folders)."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        points = [line.split()[1] for line in f if line.startswith("dgpu-job ")]
    for point in sorted(points, reverse=True):
        if point.startswith(prefix):
            _umount(Path(point))
    shutil.rmtree(root, ignore_errors=True)
