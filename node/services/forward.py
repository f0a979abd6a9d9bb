"""``/dgpu/forward/1.0.0``, the provider's side: a renter's TCP connections into its running job.

Rules: only while the job runs (the job server opens a :class:`Grant` when the job is RUNNING
and ends it when the job ends, which cuts every connection and shell of it); only the
agreement's renter (the opening message is signed by the renter's key and arrives over a
connection authenticated to that same key); only ports the job request named, and only when
the provider allows it (``AccessPolicy.allow_forward``, off by default). Per rental: at most
``max_connections`` connections and shells at once, ``bytes_per_second`` each way over all of
them, and a connection with no byte either way for ``idle_timeout_s`` is closed.

Theory of operation: :meth:`ForwardServer.handle` reads the signed :class:`ForwardOpen`, checks
it against the grant, asks the :class:`~dgpu.node.ports.access.JobAccess` port for a connection
to the port inside the job's network namespace, answers :class:`AccessGranted` (or a Reject
saying why), then :func:`pump` moves bytes both ways until both sides end, the idle bound trips
or the grant ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from dgpu.node.errors import ExecutionError, ReadTimeoutError, StreamError
from dgpu.node.ports.access import ByteStream, JobAccess
from dgpu.node.ports.network import FramedStream
from dgpu.node.services.negotiation import reject_code
from dgpu.protocol.envelope import ReplayCache, open_envelope, seal
from dgpu.protocol.errors import RemoteProtocolError
from dgpu.protocol.forward import MAX_DATA_FRAME, TO_PROVIDER_FORWARD, AccessGranted, ForwardOpen
from dgpu.protocol.ids import MAX_FRAME_BYTES
from dgpu.protocol.keys import PublicKey, SigningKey
from dgpu.protocol.messages import JobRequest, Reject, RejectCode
from dgpu.protocol.peers import peer_id_of_wallet

__all__ = ["AccessPolicy", "AccessServer", "ForwardServer", "Grant", "Grants", "RateLimit", "open_sealed", "pump"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]
Nonce = Callable[[], bytes]

ENVELOPE_TTL_S: Final = 300
#: the opening message comes at once after the stream opens
OPEN_READ_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """What a provider lets renters do inside their running jobs."""

    allow_forward: bool = False
    allow_shell: bool = False
    #: forwarded connections plus shells open at once, per rental
    max_connections: int = 16
    #: bytes per second, each direction, over all of a rental's connections and shells
    bytes_per_second: int = 16 * 1024 * 1024
    #: a connection (or shell) with no byte either way for this long is closed
    idle_timeout_s: float = 600.0
    #: connecting to the port inside the job
    connect_timeout_s: float = 10.0


class RateLimit:
    """A token bucket on trio's clock: ``rate`` bytes per second, bursts up to one second's worth."""

    def __init__(self, rate: int) -> None:
        self.rate = max(1, rate)
        self._tokens = float(self.rate)
        self._at = trio.current_time()

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes may pass (a frame larger than the burst waits for its share)."""
        now = trio.current_time()
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        if self._tokens < 0:
            await trio.sleep(-self._tokens / self.rate)


@dataclass(eq=False)
class Grant:
    """A running job as its renter may reach it; ends with the job."""

    job_id: str
    renter: PublicKey
    ports: frozenset[int]
    policy: AccessPolicy
    #: set when the job ends: every connection and shell of the job runs under :meth:`run`
    ended: trio.Event = field(default_factory=trio.Event)
    live: int = 0
    up: RateLimit = field(init=False)
    down: RateLimit = field(init=False)

    def __post_init__(self) -> None:
        self.up = RateLimit(self.policy.bytes_per_second)
        self.down = RateLimit(self.policy.bytes_per_second)

    @property
    def renter_peer(self) -> str:
        return peer_id_of_wallet(self.renter.wallet)

    async def run(self, fn: Callable[[], Awaitable[None]]) -> None:
        """``fn()`` counted as one of the rental's connections, cancelled if the job ends."""
        self.live += 1
        try:
            async with trio.open_nursery() as nursery:
                async def cut_at_end() -> None:
                    await self.ended.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cut_at_end)
                await fn()
                nursery.cancel_scope.cancel()
        finally:
            self.live -= 1


class Grants:
    """The running jobs that may be reached, by job id. Owned by the job server (open at RUNNING,
    end when the job ends); the forward and shell servers only look grants up and count on them."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy
        self._grants: dict[str, Grant] = {}

    def open(self, job_id: str, request: JobRequest, renter: PublicKey) -> Grant:
        grant = Grant(job_id, renter, frozenset(request.forward_ports), self.policy)
        self._grants[job_id] = grant
        return grant

    def end(self, job_id: str) -> None:
        grant = self._grants.pop(job_id, None)
        if grant is not None:
            grant.ended.set()

    def get(self, job_id: str) -> Grant | None:
        return self._grants.get(job_id)

    def check(self, job_id: str, signer: PublicKey, peer: str, *, allowed: bool, what: str) -> Grant:
        """The grant the renter ``signer`` (over ``peer``) may use now; RemoteProtocolError if none."""
        if not allowed:
            raise RemoteProtocolError(f"this provider does not allow {what} (--allow-{what})",
                                      reject_code=RejectCode.INVALID_REQUEST)
        grant = self._grants.get(job_id)
        if grant is None:
            raise RemoteProtocolError("no such job is running here", reject_code=RejectCode.INVALID_REQUEST)
        if signer != grant.renter or (peer and peer != grant.renter_peer):
            raise RemoteProtocolError("only the renter of this job may reach it",
                                      reject_code=RejectCode.BAD_SIGNATURE)
        if grant.live >= self.policy.max_connections:
            raise RemoteProtocolError(f"this rental already has {grant.live} connections open",
                                      reject_code=RejectCode.BUSY)
        return grant


def open_sealed(data: bytes, adapter: Any, *, clock: Clock, replay: ReplayCache,
                expected_signer: PublicKey | None = None) -> Any:
    """One signed opening or answer frame (access streams' envelopes live 5 minutes)."""
    return open_envelope(data, adapter, now=clock(), max_bytes=MAX_FRAME_BYTES, replay_cache=replay,
                         max_ttl=ENVELOPE_TTL_S, expected_signer=expected_signer)


async def pump(tcp: ByteStream, fs: FramedStream, *, idle_timeout_s: float, up: RateLimit | None = None,
               down: RateLimit | None = None) -> int:
    """Move bytes both ways until both directions ended, one side broke, or nothing moved for
    ``idle_timeout_s``; returns the bytes moved. An empty frame is end-of-data (half-close).
    ``up`` bounds stream → TCP, ``down`` TCP → stream. Closes nothing: the caller owns both."""
    moved = 0
    last = [trio.current_time()]

    async def to_stream() -> None:
        nonlocal moved
        while True:
            try:
                data = await tcp.receive_some(MAX_DATA_FRAME)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if down is not None and data:
                await down.take(len(data))
            await fs.write_frame(data)
            if not data:
                return
            moved += len(data)
            last[0] = trio.current_time()

    async def to_tcp() -> None:
        nonlocal moved
        while True:
            try:
                frame = await fs.read_frame(timeout_s=idle_timeout_s, max_bytes=MAX_DATA_FRAME)
            except ReadTimeoutError:
                continue  # the idle watch decides
            if not frame:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await tcp.send_eof()
                return
            if up is not None:
                await up.take(len(frame))
            await tcp.send_all(frame)
            moved += len(frame)
            last[0] = trio.current_time()

    async with trio.open_nursery() as nursery:
        done = [0]

        async def side(fn: Callable[[], Any]) -> None:
            try:
                await fn()
            except (StreamError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                nursery.cancel_scope.cancel()  # one side broke: the connection is over
                return
            done[0] += 1
            if done[0] == 2:
                nursery.cancel_scope.cancel()

        async def idle() -> None:
            while True:
                await trio.sleep_until(last[0] + idle_timeout_s)
                if trio.current_time() - last[0] >= idle_timeout_s:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(side, to_stream)
        nursery.start_soon(side, to_tcp)
        nursery.start_soon(idle)
    return moved


class AccessServer:
    """What the forward and shell servers share: the grants, the job access port, signed answers."""

    def __init__(self, key: SigningKey, grants: Grants, access: JobAccess, *, clock: Clock, nonce: Nonce) -> None:
        self.key = key
        self.grants = grants
        self.access = access
        self.clock = clock
        self.nonce = nonce
        self.replay = ReplayCache(capacity=20_000)  # opening envelopes live 5 min
        #: connections carried so far (metrics, tests)
        self.opened = 0

    def _seal(self, message: Any) -> bytes:
        now = self.clock()
        return seal(message, self.key, nonce=self.nonce(), issued_at=now, expires_at=now + ENVELOPE_TTL_S)

    async def refuse(self, fs: FramedStream, exc: RemoteProtocolError) -> None:
        log.info("access stream from %s refused: %s", fs.remote_peer, exc)
        with contextlib.suppress(StreamError):
            await fs.write_frame(self._seal(Reject(request_id="0" * 16, code=reject_code(exc.reject_code),
                                                   message=str(exc)[:200])))

    async def grant(self, fs: FramedStream, job_id: str, what: str) -> None:
        await fs.write_frame(self._seal(AccessGranted(job_id=job_id, what=what)))



class ForwardServer(AccessServer):
    """Serves ``/dgpu/forward/1.0.0`` for a provider."""

    async def handle(self, fs: FramedStream) -> None:
        policy = self.grants.policy
        try:
            opened = open_sealed(await fs.read_frame(timeout_s=OPEN_READ_TIMEOUT_S), TO_PROVIDER_FORWARD,
                                 clock=self.clock, replay=self.replay)
            msg: ForwardOpen = opened.message
            grant = self.grants.check(msg.job_id, opened.signer, fs.remote_peer, allowed=policy.allow_forward,
                                      what="forward")
            if msg.port not in grant.ports:
                raise RemoteProtocolError(f"port {msg.port} was not asked for in the job request",
                                          reject_code=RejectCode.INVALID_REQUEST)
        except RemoteProtocolError as exc:
            await self.refuse(fs, exc)
            return
        except StreamError:
            return
        await grant.run(lambda: self._carry(fs, grant, msg))

    async def _carry(self, fs: FramedStream, grant: Grant, msg: ForwardOpen) -> None:
        try:
            with trio.fail_after(grant.policy.connect_timeout_s):
                tcp = await self.access.connect(msg.job_id, msg.port)
        except (ExecutionError, trio.TooSlowError) as exc:
            await self.refuse(fs, RemoteProtocolError(f"could not connect to port {msg.port} in the job: {exc}",
                                                      reject_code=RejectCode.INTERNAL_ERROR))
            return
        self.opened += 1
        try:
            await self.grant(fs, msg.job_id, "forward")
            await pump(tcp, fs, idle_timeout_s=grant.policy.idle_timeout_s, up=grant.up, down=grant.down)
        except StreamError:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await tcp.aclose()
