"""``/dgpu/shell/1.0.0``, the provider's side: an interactive terminal in a renter's running job.

The same rules as forwarding (``services.forward``): only while the job runs, only its renter,
only when the provider allows it (``AccessPolicy.allow_shell``, off by default), counted against
the rental's connection bound and rate. The command runs in the job's own namespaces as the
job's user (the ``JobAccess`` port: Docker exec with a PTY, or nsenter into a script job's
sandbox), never on the host. Keystrokes (Ctrl-C included: on a terminal it is just a byte),
window sizes and signals come in; output goes out; the exit code is the last frame. The command
is killed when the renter goes, the idle bound trips, or the job ends.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from dgpu.node.errors import ExecutionError, ReadTimeoutError, StreamError
from dgpu.node.ports.access import ShellProcess
from dgpu.node.ports.network import FramedStream
from dgpu.node.services.forward import OPEN_READ_TIMEOUT_S, AccessServer, Grant, open_sealed
from dgpu.protocol.errors import MalformedError, RemoteProtocolError
from dgpu.protocol.forward import (
    MAX_DATA_FRAME,
    TO_PROVIDER_SHELL,
    ShellFrame,
    ShellOpen,
    exit_frame,
    parse_resize,
    parse_shell_frame,
    shell_frame,
)
from dgpu.protocol.messages import RejectCode

__all__ = ["ShellServer"]

log = logging.getLogger(__name__)


class ShellServer(AccessServer):
    """Serves ``/dgpu/shell/1.0.0`` for a provider."""

    async def handle(self, fs: FramedStream) -> None:
        policy = self.grants.policy
        try:
            opened = open_sealed(await fs.read_frame(timeout_s=OPEN_READ_TIMEOUT_S), TO_PROVIDER_SHELL,
                                 clock=self.clock, replay=self.replay)
            msg: ShellOpen = opened.message
            grant = self.grants.check(msg.job_id, opened.signer, fs.remote_peer, allowed=policy.allow_shell,
                                      what="shell")
        except RemoteProtocolError as exc:
            await self.refuse(fs, exc)
            return
        except StreamError:
            return
        await grant.run(lambda: self._session(fs, grant, msg))

    async def _session(self, fs: FramedStream, grant: Grant, msg: ShellOpen) -> None:
        try:
            proc = await self.access.shell(msg.job_id, msg.argv, rows=msg.rows, cols=msg.cols, tty=msg.tty)
        except ExecutionError as exc:
            await self.refuse(fs, RemoteProtocolError(f"could not start the shell: {exc}",
                                                      reject_code=RejectCode.INTERNAL_ERROR))
            return
        self.opened += 1
        try:
            await self.grant(fs, msg.job_id, "shell")
            await _serve(fs, proc, grant)
        except StreamError:
            log.info("shell in job %s: the renter left", msg.job_id[:12])
        finally:
            with trio.CancelScope(shield=True):
                await proc.kill()


async def _serve(fs: FramedStream, proc: ShellProcess, grant: Grant) -> None:
    """Until the command exits (then its code is sent), the renter goes, or nothing moves for the
    idle bound."""
    idle_s = grant.policy.idle_timeout_s
    last = [trio.current_time()]

    async def output() -> None:
        while data := await proc.read(MAX_DATA_FRAME - 1):
            await grant.down.take(len(data))
            await fs.write_frame(shell_frame(ShellFrame.DATA, data))
            last[0] = trio.current_time()
        code = await proc.wait()
        await fs.write_frame(exit_frame(code))

    async def keys() -> None:
        while True:
            try:
                frame = await fs.read_frame(timeout_s=idle_s, max_bytes=MAX_DATA_FRAME + 1)
            except ReadTimeoutError:
                continue
            try:
                kind, payload = parse_shell_frame(frame)
            except MalformedError as exc:
                log.info("shell: ignoring a bad frame: %s", exc)
                continue
            last[0] = trio.current_time()
            if kind is ShellFrame.DATA:
                await grant.up.take(len(payload))
                await proc.write(payload)
            elif kind is ShellFrame.RESIZE:
                await proc.resize(*parse_resize(payload))
            elif kind is ShellFrame.SIGNAL:
                await proc.signal(payload[0])
            elif kind is ShellFrame.EOF:
                await proc.close_input()

    async with trio.open_nursery() as nursery:
        async def run_output() -> None:
            await output()
            nursery.cancel_scope.cancel()

        async def run_keys() -> None:
            with contextlib.suppress(ExecutionError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                await keys()  # input broken (the command closed it): output still runs to the end

        async def idle() -> None:
            while True:
                await trio.sleep_until(last[0] + idle_s)
                if trio.current_time() - last[0] >= idle_s:
                    log.info("shell in job %s idle for %.0f s: closed", grant.job_id[:12], idle_s)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(run_output)
        nursery.start_soon(run_keys)
        nursery.start_soon(idle)
