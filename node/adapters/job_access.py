"""The way into a running job (the ``JobAccess`` port): a TCP port in its network namespace, a shell.

A job keeps no network of its own (a Docker job runs with ``network_mode=none``, a script job in
a fresh network namespace of bwrap's), so nothing on the host can reach its ports. To connect,
a fresh thread enters the job's network namespace (``setns`` on ``/proc/PID/ns/net`` of the
job's init: it changes the calling thread only), creates and connects a socket to
127.0.0.1:PORT there and exits; the socket stays in the job's namespace and is handed to trio.
The daemon's own threads never change namespace. Needs CAP_SYS_ADMIN (a root daemon).

Shells: a Docker job gets ``docker exec`` (with a PTY when asked) in its container, as the
container's user, under the container's capabilities; a script job gets ``nsenter`` into its
sandbox's namespaces (mount, PID, network, IPC, UTS, its root and folder) and ``setpriv`` to the
job's uid (no groups, no capabilities, ``no_new_privs``), on a PTY the daemon opens.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import sys
import termios
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import trio

from dgpu.node.adapters.sandbox import JOB_HOME, sandbox_init
from dgpu.node.adapters.script_executor import ScriptJobHandle
from dgpu.node.errors import ExecutionError, ExecutorFailure
from dgpu.node.ports.access import ByteStream, ShellProcess

if TYPE_CHECKING:
    from dgpu.node.adapters.docker_job import DockerJobHandle

__all__ = ["LocalJobAccess", "connect_in_netns"]

_CLONE_NEWNET = 0x40000000
_SHELL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": JOB_HOME, "TERM": "xterm-256color", "LANG": "C.UTF-8"}
#: how long a job that was just reported running may take to have a handle
_HANDLE_WAIT_S = 10.0
#: one Docker engine call for a shell (exec create/start/inspect/resize) at most this long
_ENGINE_TIMEOUT_S = 30.0


def _is_docker_job(handle: object) -> TypeGuard[DockerJobHandle]:
    # the Docker SDK is imported only by a node that runs Docker jobs (idle RSS): a handle of one
    # exists only once its module was loaded
    module = sys.modules.get("dgpu.node.adapters.docker_job")
    return module is not None and isinstance(handle, module.DockerJobHandle)


def _connect_in_thread(pid: int, port: int, timeout_s: float) -> socket.socket:
    """Connect to 127.0.0.1:``port`` in ``pid``'s network namespace, from a thread that dies after."""
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout_s)
                sock.connect(("127.0.0.1", port))
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            out["sock"] = sock
        except OSError as exc:
            out["error"] = exc

    # a thread of its own, never trio's pooled ones: it ends inside the job's namespace
    thread = threading.Thread(target=work, name=f"netns-connect-{pid}", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]  # type: ignore[no-any-return]


async def connect_in_netns(pid: int, port: int, *, timeout_s: float = 10.0) -> trio.SocketStream:
    """A TCP stream to 127.0.0.1:``port`` inside ``pid``'s network namespace; ExecutionError if not."""
    try:
        sock = await trio.to_thread.run_sync(_connect_in_thread, pid, port, timeout_s)
    except OSError as exc:
        raise ExecutorFailure(f"port {port} in the job: {exc.strerror or exc}") from exc
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


class _PtyProcess:
    """A process on a PTY the daemon holds (the script job's shell)."""

    def __init__(self, proc: trio.Process, master: int) -> None:
        self._proc = proc
        self._master = master
        self._stream = trio.lowlevel.FdStream(os.dup(master))

    async def read(self, max_bytes: int) -> bytes:
        try:
            return await self._stream.receive_some(max_bytes)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return b""  # EIO: every holder of the terminal's other side closed it

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except OSError as exc:
            raise ExecutorFailure(f"the shell's terminal: {exc}") from exc

    async def close_input(self) -> None:
        await self.write(b"\x04")  # a terminal has no half-close: ^D is end-of-input

    async def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def signal(self, signum: int) -> None:
        with contextlib.suppress(OSError):
            group = os.tcgetpgrp(self._master)  # the terminal's foreground job
            # 0 (none yet) or the daemon's own group would signal the daemon itself
            if group > 1 and group != os.getpgrp():
                os.killpg(group, signum)

    async def wait(self) -> int:
        code = await self._proc.wait()
        return 128 - code if code < 0 else code

    async def kill(self) -> None:
        if self._master >= 0:  # the session inside the job (closing the PTY also hangs it up)
            await self.signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with trio.move_on_after(5):
            await self._proc.wait()
        with contextlib.suppress(trio.ClosedResourceError, OSError):
            await self._stream.aclose()
        with contextlib.suppress(OSError):
            os.close(self._master)
        self._master = -1


class _DockerExec:
    """``docker exec`` in a job's container, over the engine's hijacked connection."""

    def __init__(self, api: Any, exec_id: str, sock: socket.socket, *, tty: bool) -> None:
        self._api = api
        self._id = exec_id
        self._tty = tty
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._buf = bytearray()

    async def _engine(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from dgpu.node.adapters.docker_job import converted  # loaded already: a Docker job exists

        with trio.fail_after(_ENGINE_TIMEOUT_S):
            return await trio.to_thread.run_sync(lambda: converted(fn, *args, **kwargs), abandon_on_cancel=True)

    async def read(self, max_bytes: int) -> bytes:
        try:
            if self._tty:
                return await self._stream.receive_some(max_bytes)
            while True:  # without a TTY the engine multiplexes: 8-byte header (stream, size), data
                if len(self._buf) >= 8:
                    size = struct.unpack(">xxxxL", self._buf[:8])[0]
                    if len(self._buf) >= 8 + size:
                        data = bytes(self._buf[8:8 + size])
                        del self._buf[:8 + size]
                        if data:
                            return data[:max_bytes] if len(data) <= max_bytes else data
                        continue
                chunk = await self._stream.receive_some(65536)
                if not chunk:
                    return b""
                self._buf += chunk
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (OSError, trio.BrokenResourceError) as exc:
            raise ExecutorFailure(f"the shell's input: {exc}") from exc

    async def close_input(self) -> None:
        if self._tty:
            await self.write(b"\x04")
            return
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._stream.send_eof()

    async def resize(self, rows: int, cols: int) -> None:
        if self._tty:
            with contextlib.suppress(ExecutionError, trio.TooSlowError):
                await self._engine(self._api.exec_resize, self._id, height=rows, width=cols)

    async def _pid(self) -> int | None:
        try:
            info = await self._engine(self._api.exec_inspect, self._id)
        except (ExecutionError, trio.TooSlowError):
            return None
        return int(info.get("Pid") or 0) if info.get("Running") else None

    async def signal(self, signum: int) -> None:
        pid = await self._pid()
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    async def wait(self) -> int:
        while True:  # output has ended; the engine marks the exec finished a moment later
            info = await self._engine(self._api.exec_inspect, self._id)
            if not info.get("Running"):
                return int(info.get("ExitCode") or 0)
            await trio.sleep(0.05)

    async def kill(self) -> None:
        with contextlib.suppress(trio.TooSlowError):
            await self.signal(signal.SIGKILL)
        with contextlib.suppress(trio.ClosedResourceError, OSError):
            await self._stream.aclose()


class LocalJobAccess:
    """The ``JobAccess`` port over this daemon's executors; ``handle_of`` finds a running job's
    executor handle (the job service's)."""

    def __init__(self, handle_of: Callable[[str], object | None]) -> None:
        self._handle_of = handle_of
        self.nsenter = "/usr/bin/nsenter"
        self.setpriv = "/usr/bin/setpriv"
        self.setsid = "/usr/bin/setsid"

    async def _handle(self, job_id: str) -> object:
        # the job stream reports RUNNING as the job service starts the job: its handle follows
        with trio.move_on_after(_HANDLE_WAIT_S):
            while (handle := self._handle_of(job_id)) is None:
                await trio.sleep(0.05)
            return handle
        raise ExecutorFailure("the job is not running here")

    async def _netns_pid(self, handle: object) -> int:
        pid: int | None = None
        if isinstance(handle, ScriptJobHandle):
            pid = await trio.to_thread.run_sync(sandbox_init, handle.pid)
        elif _is_docker_job(handle):
            pid = await handle.namespace_pid()
        if not pid:
            raise ExecutorFailure("the job has no running process to reach")
        return pid

    async def connect(self, job_id: str, port: int) -> ByteStream:
        pid = await self._netns_pid(await self._handle(job_id))
        return await connect_in_netns(pid, port)

    async def shell(self, job_id: str, argv: Sequence[str], *, rows: int, cols: int, tty: bool) -> ShellProcess:
        handle = await self._handle(job_id)
        command = list(argv) or ["/bin/sh"]
        if isinstance(handle, ScriptJobHandle):
            return await self._script_shell(handle, command, rows=rows, cols=cols)
        if _is_docker_job(handle):
            return await self._docker_shell(handle, command, rows=rows, cols=cols, tty=tty)
        raise ExecutorFailure("this kind of job has no shell")

    async def _docker_shell(self, handle: DockerJobHandle, argv: list[str], *, rows: int, cols: int,
                            tty: bool) -> ShellProcess:
        api = handle.engine_api

        def start() -> tuple[str, socket.socket]:
            created = api.exec_create(handle.container_id, argv, stdin=True, stdout=True, stderr=True, tty=tty,
                                      environment={"TERM": _SHELL_ENV["TERM"]})
            exec_id = str(created["Id"])
            hijacked = api.exec_start(exec_id, tty=tty, socket=True)
            raw = getattr(hijacked, "_sock", hijacked)
            sock = socket.socket(fileno=os.dup(raw.fileno()))  # ours; the SDK's object may close its own
            sock.setblocking(False)
            with contextlib.suppress(Exception):  # the SDK's wrapper; our duplicate lives on
                hijacked.close()
            return exec_id, sock

        from dgpu.node.adapters.docker_job import converted

        with trio.fail_after(_ENGINE_TIMEOUT_S):
            exec_id, sock = await trio.to_thread.run_sync(lambda: converted(start))
        proc = _DockerExec(api, exec_id, sock, tty=tty)
        await proc.resize(rows, cols)
        return proc

    async def _script_shell(self, handle: ScriptJobHandle, argv: list[str], *, rows: int, cols: int) -> ShellProcess:
        if handle.uid is None or os.geteuid() != 0:
            raise ExecutorFailure("shells in script jobs need a root daemon (its jobs run as their own uid)")
        init = await trio.to_thread.run_sync(sandbox_init, handle.pid)
        if init is None:
            raise ExecutorFailure("the job's sandbox is not running")
        uid = str(handle.uid)
        command = [self.nsenter, f"--target={init}", "--mount", "--uts", "--ipc", "--net", "--pid", "--root",
                   "--wd", "--", self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
                   # a session of its own inside the job's PID namespace, the PTY its terminal: job
                   # control (Ctrl-C, the shell's foreground group) never names a process outside
                   self.setsid, "--ctty", "--wait", *argv]
        master, slave = os.openpty()
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            proc = await trio.lowlevel.open_process(command, stdin=slave, stdout=slave, stderr=slave,
                                                    env=dict(_SHELL_ENV), cwd="/", start_new_session=True,
                                                    close_fds=True)
        except OSError as exc:
            os.close(master)
            raise ExecutorFailure(f"could not start the shell: {exc}") from exc
        finally:
            os.close(slave)  # the child holds it now; EOF on the master once the child is gone
        return _PtyProcess(proc, master)
