"""Start a child process from the thread that runs trio, not from a worker thread.

Why: ``trio.lowlevel.open_process`` forks in a worker thread, and trio ends a worker thread
after 10 s idle. ``bwrap --die-with-parent`` (``PR_SET_PDEATHSIG``) fires when the *thread*
that forked it ends, so a script job was killed (SIGKILL) about 10 s after the daemon's thread
pool went quiet, for example once its renter had gone away. Forked from the trio thread (which
lives as long as the daemon), a job dies with the daemon and only then.

:class:`SpawnedProcess` has the part of ``trio.Process`` the script executor uses: ``pid``,
``returncode``, ``stdout``/``stderr`` (trio streams) and ``wait()``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from typing import Any

import trio

__all__ = ["SpawnedProcess", "spawn"]


class SpawnedProcess:
    """A child process with trio pipes; ``wait()`` waits on its pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: trio.lowlevel.FdStream,
                 stderr: trio.lowlevel.FdStream) -> None:
        self._popen = popen
        self.stdout = stdout
        self.stderr = stderr
        self._pidfd = os.pidfd_open(popen.pid)
        self._wait_lock = trio.Lock()  # one waiter on the pidfd at a time; the others queue

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        """The exit code (negative: the signal), once the process has ended."""
        async with self._wait_lock:
            while self._popen.poll() is None:
                await trio.lowlevel.wait_readable(self._pidfd)
            if self._pidfd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._pidfd)
                self._pidfd = -1
        code = self._popen.returncode
        assert code is not None
        return code


def spawn(argv: Sequence[str], **options: Any) -> SpawnedProcess:
    """``subprocess.Popen(argv, **options)`` from the calling (trio) thread, stdout and stderr piped.

    Synchronous on purpose: the fork must happen in this thread (it blocks for the fork only)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        popen = subprocess.Popen(list(argv), stdout=out_w, stderr=err_w, **options)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return SpawnedProcess(popen, trio.lowlevel.FdStream(out_r), trio.lowlevel.FdStream(err_r))
