"""Sandboxes for script jobs: a uid of its own per job, bubblewrap namespaces.

Why bubblewrap and not ``unshare --pid --fork --mount-proc``: a job must also lose its view of
the file system (the node's data dir, other jobs' folders) and bwrap builds that view from an
empty root in one call (read-only system folders, the job's own folder, a fresh ``/proc`` of
its PID namespace, a minimal ``/dev``) with ``--die-with-parent``; unshare would need a mount
script run inside the namespace. When the daemon is root bwrap runs as root without a user
namespace (so the node's data dir can stay 0700: bwrap, not the job, opens the job's folder)
and the job drops to its own uid inside through ``setpriv`` (no groups, no capabilities, empty
bounding set, ``no_new_privs``); the job's processes are that host uid. Otherwise bwrap runs as
the daemon's uid in a user namespace mapping that uid to itself.

The uid pool: ``base + slot`` for ``slot < size``; :meth:`UidPool.acquire` skips a uid that is
held by a running job, names a user in the passwd database, or still owns a process (a job's
straggler: a uid is never reused while a process of it lives).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from dgpu.node.errors import ExecutorFailure

__all__ = [
    "DEFAULT_UID_BASE",
    "JOB_HOME",
    "SYSTEM_DIRS",
    "UidPool",
    "bwrap_argv",
    "detect_bwrap",
    "gpu_devices",
    "kill_leftovers",
    "namespace_pids",
    "probe_bwrap",
    "process_start",
    "sandbox_init",
]

DEFAULT_UID_BASE = 200_000
#: the job's folder as the job sees it (HOME, working directory)
JOB_HOME = "/job"
#: read-only in every sandbox; missing ones are skipped (merged-/usr systems lack some)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


class UidPool:
    """Allocates one host uid per running job. Owned by one executor (no locking: trio)."""

    def __init__(self, base: int = DEFAULT_UID_BASE, size: int = 4096) -> None:
        if base < 1000 or size < 1:
            raise ValueError("the job uid range must lie above system uids")
        self.base = base
        self.size = size
        self._held: set[int] = set()

    def acquire(self) -> int:
        """A uid no running job holds and no process runs as. Blocking (reads /proc)."""
        busy = _uids_with_processes()
        for uid in range(self.base, self.base + self.size):
            if uid in self._held or uid in busy or _is_user(uid):
                continue
            self._held.add(uid)
            return uid
        raise ExecutorFailure(f"all {self.size} job uids from {self.base} are in use")

    def release(self, uid: int) -> None:
        self._held.discard(uid)


def _is_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _uids_with_processes() -> set[int]:
    uids: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                uids.add(entry.stat(follow_symlinks=False).st_uid)
            except OSError:
                continue  # exited meanwhile
    return uids


def gpu_devices() -> list[str]:
    """The NVIDIA device nodes of this host (all of them: which GPU a job uses is chosen by
    ``CUDA_VISIBLE_DEVICES``, not enforced; the isolation statement says GPUs are shared)."""
    return sorted(str(p) for p in Path("/dev").glob("nvidia*"))


def bwrap_argv(
    bwrap: str,
    *,
    home: Path,
    inputs: Path,
    network: bool,
    user_ns: bool,
    argv: list[str],
    devices: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The command that runs ``argv`` in its own PID, mount, IPC, UTS and (unless ``network``)
    network namespaces, seeing only the system folders read-only, ``home`` read-write at
    :data:`JOB_HOME` (``/tmp`` is its ``tmp``) and ``inputs`` read-only at ``JOB_HOME/inputs``.

    ``devices`` (GPU nodes) are bound into its otherwise minimal ``/dev``.
    ``user_ns``: the daemon is not root, so bwrap needs a user namespace of its own (mapping
    the daemon's uid to itself); as root, bwrap runs without one and ``argv`` drops the uid."""
    out = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session"]
    if user_ns:
        out += ["--unshare-user", "--cap-drop", "ALL"]
    if not network:
        out.append("--unshare-net")
    for d in SYSTEM_DIRS:
        if os.path.exists(d):
            out += ["--ro-bind", d, d]
    out += ["--proc", "/proc", "--dev", "/dev"]
    for dev in devices:  # after --dev: bound into the fresh /dev
        out += ["--dev-bind-try", dev, dev]
    out += ["--bind", str(home), JOB_HOME,
            "--bind", str(home / "tmp"), "/tmp", "--ro-bind", str(inputs), f"{JOB_HOME}/inputs",
            "--chdir", JOB_HOME, "--"]
    return out + argv


def detect_bwrap() -> str | None:
    """bwrap's path if a sandbox starts here the way :func:`bwrap_argv` starts one."""
    return probe_bwrap()[0]


#: a sandbox that has not started within this many seconds counts as not starting; a machine
#: starting many nodes at once can take seconds, so a slow start is tried again, not a refusal
BWRAP_PROBE_TIMEOUT_S = 30.0
BWRAP_PROBE_TRIES = 3


def probe_bwrap(*, timeout_s: float = BWRAP_PROBE_TIMEOUT_S, tries: int = BWRAP_PROBE_TRIES
                ) -> tuple[str | None, str]:
    """(bwrap's path, "") if a sandbox starts here the way :func:`bwrap_argv` starts one, else
    (None, why): not installed, or what bwrap said when it refused."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None, "bwrap is not installed"
    cmd = [exe, "--unshare-pid", "--unshare-net", "--die-with-parent"]
    if os.geteuid() != 0:
        cmd.append("--unshare-user")
    cmd += ["--ro-bind", "/", "/", "--proc", "/proc", "--", "true"]
    why = ""
    for attempt in range(tries):
        if attempt:
            time.sleep(0.2 * attempt)
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            why = f"a test sandbox did not start within {timeout_s:.0f} s"
            continue  # a loaded machine, not a broken sandbox: try again
        except OSError as exc:
            return None, f"bwrap cannot run: {exc.strerror or exc}"
        if done.returncode == 0:
            return exe, ""
        # tried again too: bwrap's recursive bind of / fails when a mount comes or goes meanwhile
        # (another node's tmpfs probe, a container starting), which says nothing about this host
        said = done.stderr.decode(errors="replace").strip().splitlines()
        why = f"bwrap refused: {said[-1][:200] if said else f'exit code {done.returncode}'}"
    return None, why


def sandbox_init(outer_pid: int) -> int | None:
    """bwrap's init in the sandbox (``outer_pid``'s child): its namespaces are the job's."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _ppid(int(entry.name)) == outer_pid:
            return int(entry.name)
    return None


def namespace_pids(outer_pid: int) -> list[int]:
    """The job's processes: those in the PID namespace of ``outer_pid``'s child (bwrap's init),
    that init excluded (it ignores SIGTERM; killing ``outer_pid`` takes it and all down)."""
    init = sandbox_init(outer_pid)
    if init is None:
        return []
    try:
        ns = os.readlink(f"/proc/{init}/ns/pid")
    except OSError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != init:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/ns/pid") == ns:
                    pids.append(int(entry.name))
    return pids


def _stat_fields(pid: int) -> list[bytes] | None:
    """``/proc/PID/stat`` after the command name: field 3 (state) is index 0."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after ")"
    return stat[stat.rindex(b")") + 2 :].split()


def _ppid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, names one process for good
    (a pid is reused, the pair never is). None when it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def kill_leftovers(pid: int, start: int) -> int:
    """SIGKILL what is left of a job a crashed daemon started, if ``pid`` is still its bwrap (the
    process that started at ``start``): the processes of its PID namespace and its process group.
    Nothing of it can outlive that bwrap (its namespace's init dies with it, and the kernel kills
    a namespace whose init died), so a bwrap gone means nothing is left, and a pid reused since
    is never touched. Blocking (reads /proc); how many processes were signalled."""
    if process_start(pid) != start:
        return 0
    victims = {pid, *namespace_pids(pid)}
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    return len(victims)
