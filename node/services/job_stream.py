"""``/dgpu/job/1.0.0``, the provider's side: submit, ordered status and log events, cancel, exit code.

Provider (:class:`JobServer`): the renter opens the stream and sends ``JobSubmit`` carrying the
Agreement. The provider checks both signatures, that it signed this agreement itself and has
not run it yet (:class:`~dgpu.node.services.negotiation.AgreementStore`), and re-reads the
escrow on its ledger (:class:`EscrowGate`: a renter may have closed it since the Accept). Then,
money before work: inputs are fetched, the escrow is started and read back started, and only
then is the job started, on the GPUs of the agreement's lease (``JobSpec.gpu_uuids``, released
when the job ends). It streams ``JobStatus`` (accepted → starting → running → final, with the
exit code) and ``LogChunk`` frames in order. A ``JobCancel`` from the renter stops the job in
any state (STARTING too); billing stops it when the escrow is closed or runs out.

Detach: the job runs in the server's nursery and writes its events into a ``JobFeed``, which the
renter's stream only reads; when it breaks a batch job runs on unless ``stop_on_disconnect`` (or
interactive). ``/dgpu/job/1.1.0`` adds heartbeats and re-attach (``JobAttach``, the agreement's
renter only, while the feed is kept: ``FEED_RETENTION_S``). The renter's side is ``job_renter``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Protocol

import trio

from dgpu.node.errors import (
    ExecutionError,
    NetworkError,
    ReadTimeoutError,
    StreamError,
)
from dgpu.node.ports.execution import ExitReason, ExitStatus, JobHandle, JobSpec, ResourceLimits
from dgpu.node.ports.network import FramedStream, Network
from dgpu.node.ports.push import ResultPusher
from dgpu.node.services.blobs import BlobError, BlobShelf, fetch_blob
from dgpu.node.services.forward import Grants
from dgpu.node.services.interactive import job_payload, time_limit_s
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.job_feed import FeedTable, JobFeed, stream_feed
from dgpu.node.services.negotiation import AgreementStore, reject_code
from dgpu.node.services.result_shelf import shelve_result
from dgpu.protocol.envelope import ReplayCache, open_envelope, seal, verify_detached
from dgpu.protocol.errors import RemoteProtocolError
from dgpu.protocol.ids import MAX_FRAME_BYTES, MAX_LOG_CHUNK_CHARS
from dgpu.protocol.job_frames import TO_PROVIDER_JOB_V2, JobAttach, JobAttached
from dgpu.protocol.keys import PublicKey, SigningKey
from dgpu.protocol.messages import (
    TO_PROVIDER_JOB,
    Agreement,
    AgreementTerms,
    Executor,
    JobCancel,
    JobRequest,
    JobState,
    JobStatus,
    JobSubmit,
    Reject,
    RejectCode,
)

__all__ = ["EscrowGate", "JobServer"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]
Nonce = Callable[[], bytes]

ENVELOPE_TTL_S: Final = 300
#: the submit must arrive quickly after the stream opens
SUBMIT_READ_TIMEOUT_S: Final = 10.0
#: all of one job's inputs together (each is also bounded by the shelf's blob limit)
MAX_INPUT_BYTES: Final = 4 * 1024**3


class ExecutorLike(Protocol):
    async def start(self, spec: JobSpec, limits: ResourceLimits) -> JobHandle: ...


class EscrowGate(Protocol):
    """The provider's view of an agreement's escrow on its ledger (money before work)."""

    async def problem(self, terms: AgreementTerms) -> str | None:
        """Why the escrow does not fund the terms now (closed, started, short); None if it does."""
        ...

    async def start(self, terms: AgreementTerms) -> str | None:
        """Start the escrow on the ledger and read it back started; why not, or None."""
        ...

    async def settle(self, terms: AgreementTerms) -> None:
        """Close a started escrow whose job did not run (pays what accrued, refunds the rest)."""
        ...


#: called when a job starts running, its escrow already started: (agreement, stop(reason),
#: job_done). The provider's billing uses it to claim, stop the job when the escrow is closed or
#: runs out, and settle; it must only schedule work (in a long-lived nursery) and return at once.
OnRunning = Callable[[Agreement, Callable[[str], Awaitable[None]], trio.Event], None]


_EXIT_STATE: Final = {
    ExitReason.FINISHED: JobState.FINISHED,
    ExitReason.FAILED: JobState.FAILED,
    ExitReason.OOM: JobState.FAILED,
    ExitReason.TIMEOUT: JobState.EXPIRED,
    ExitReason.CANCELLED: JobState.CANCELLED,
}


def _clamp_exit(code: int | None) -> int | None:
    return None if code is None else max(-255, min(255, code))


class JobServer:
    """Serves ``/dgpu/job/1.0.0`` for a provider."""

    def __init__(self, key: SigningKey, agreements: AgreementStore, inventory: Inventory, *,
                 executor_for: Callable[[Executor], ExecutorLike | None],
                 limits_cap: ResourceLimits, clock: Clock, nonce: Nonce,
                 on_running: OnRunning | None = None, deadline_clock: Clock | None = None,
                 blobs: BlobShelf | None = None, node: Network | None = None,
                 transfer_root: Path | None = None, escrow: EscrowGate | None = None,
                 on_abandoned: Callable[[str], None] | None = None,
                 nursery: trio.Nursery | None = None, grants: Grants | None = None,
                 pusher: ResultPusher | None = None) -> None:
        self.key = key
        #: pushes results to the renter's upload link when its request has one
        self.pusher = pusher
        #: where jobs run, so they outlive their renter's stream (None: in the stream's handler)
        self.nursery = nursery
        #: running and recently ended jobs' events, for the streams that follow them
        self.feeds = FeedTable(clock)
        #: running jobs their renters may reach (forwarded ports, shells); None: none may
        self.grants = grants
        #: the ledger's escrows (None: a provider with no ledger signs no agreement anyway)
        self.escrow = escrow
        #: told the renter's wallet when it submits an agreement whose escrow it has emptied
        self.on_abandoned = on_abandoned
        #: inputs are fetched from the renter and results shelved only when all three are set
        self.blobs = blobs
        self.node = node
        self.transfer_root = transfer_root
        #: the escrow ledger's clock, which start deadlines are set on
        self.deadline_clock = deadline_clock or clock
        self.on_running = on_running
        self.agreements = agreements
        self.inventory = inventory
        self.executor_for = executor_for
        self.limits_cap = limits_cap
        self.clock = clock
        self.nonce = nonce
        self.replay_cache = ReplayCache(capacity=20_000)  # job envelopes live 5 min
        #: jobs running now (the negotiator counts them against capacity)
        self.running: set[str] = set()
        self.finished: dict[str, JobState] = {}

    def _seal(self, message: Any) -> bytes:
        now = self.clock()
        return seal(message, self.key, nonce=self.nonce(), issued_at=now,
                    expires_at=now + ENVELOPE_TTL_S)

    def _check_agreement(self, agreement: Agreement, signer: PublicKey) -> JobRequest:
        terms = agreement.terms
        if terms.provider != self.key.public_key.wallet:
            raise RemoteProtocolError("agreement names another provider",
                                      reject_code=RejectCode.INVALID_REQUEST)
        if terms.renter != signer.wallet:
            raise RemoteProtocolError("only the renter of an agreement may submit it",
                                      reject_code=RejectCode.BAD_SIGNATURE)
        verify_detached(terms, agreement.provider_sig, self.key.public_key)
        verify_detached(terms, agreement.renter_sig, signer)
        stored = self.agreements.take(agreement.agreement_id)
        if stored is None or stored.agreement != agreement:
            self.inventory.release(agreement.agreement_id)  # taken, so it can never run
            raise RemoteProtocolError("unknown or already used agreement",
                                      reject_code=RejectCode.INVALID_REQUEST)
        if terms.start_deadline <= self.deadline_clock() or self.inventory.hold(agreement.agreement_id) is None:
            self.inventory.release(agreement.agreement_id)  # this agreement will never run
            raise RemoteProtocolError("the start deadline passed",
                                      reject_code=RejectCode.EXPIRED)
        return stored.request

    async def handle(self, fs: FramedStream) -> None:
        """``/dgpu/job/1.0.0``: a submit, no heartbeats, no re-attach."""
        await self._handle(fs, v2=False)

    async def handle_v2(self, fs: FramedStream) -> None:
        """``/dgpu/job/1.1.0``: a submit or a re-attach, with heartbeats."""
        await self._handle(fs, v2=True)

    async def _handle(self, fs: FramedStream, *, v2: bool) -> None:
        adapter: Any = TO_PROVIDER_JOB_V2 if v2 else TO_PROVIDER_JOB
        try:
            data = await fs.read_frame(timeout_s=SUBMIT_READ_TIMEOUT_S)
            opened = open_envelope(data, adapter, now=self.clock(),
                                   max_bytes=MAX_FRAME_BYTES, replay_cache=self.replay_cache,
                                   max_ttl=ENVELOPE_TTL_S)
            first = opened.message
            if isinstance(first, JobAttach):
                feed = self._attachable(first, opened.signer)
                await fs.write_frame(self._seal(JobAttached(
                    job_id=feed.job_id, log_offset=max(first.log_offset, feed.first_log_seq))))
                log.info("job %s: the renter re-attached (logs from %d)", feed.job_id[:12], first.log_offset)
                await self._attend(fs, feed, adapter, log_from=max(first.log_offset, feed.first_log_seq), v2=v2)
                return
            if not isinstance(first, JobSubmit):
                raise RemoteProtocolError("a job stream starts with job_submit",
                                          reject_code=RejectCode.PROTOCOL_ERROR)
            request = self._check_agreement(first.agreement, opened.signer)
            await self._check_escrow(first.agreement)
        except RemoteProtocolError as exc:
            log.info("job stream from %s refused: %s", fs.remote_peer, exc)
            # no request id may be known yet; answer with a zero id so the renter sees why
            await self._send_quiet(fs, Reject(request_id="0" * 16, code=reject_code(exc.reject_code),
                                              message=str(exc)[:200]))
            return
        except StreamError as exc:
            log.info("job stream from %s ended early: %s", fs.remote_peer, exc)
            return
        feed = JobFeed(first.agreement.agreement_id, opened.signer, peer=fs.remote_peer,
                       stop_on_disconnect=request.stop_on_disconnect or request.interactive)
        self.feeds.add(feed)
        if self.nursery is not None:
            self.nursery.start_soon(self._job_task, feed, first.agreement, request, opened.signer)
            await self._attend(fs, feed, adapter, log_from=0, v2=v2)
            return
        async with trio.open_nursery() as nursery:  # no server nursery: the job lives in this handler
            nursery.start_soon(self._job_task, feed, first.agreement, request, opened.signer)
            await self._attend(fs, feed, adapter, log_from=0, v2=v2)

    def _attachable(self, attach: JobAttach, signer: PublicKey) -> JobFeed:
        """The feed a re-attach may follow: only the agreement's renter, only while it is kept."""
        feed = self.feeds.get(attach.job_id)
        if feed is None:
            raise RemoteProtocolError("no such job here (unknown, or its retention ended)",
                                      reject_code=RejectCode.INVALID_REQUEST)
        if feed.renter != signer:
            raise RemoteProtocolError("only the renter of an agreement may attach to its job",
                                      reject_code=RejectCode.BAD_SIGNATURE)
        if attach.log_offset > feed.next_log_seq:
            raise RemoteProtocolError(f"log offset {attach.log_offset} is past the job's {feed.next_log_seq}",
                                      reject_code=RejectCode.INVALID_REQUEST)
        return feed

    async def _attend(self, fs: FramedStream, feed: JobFeed, adapter: Any, *, log_from: int, v2: bool) -> None:
        """Stream the feed to this renter and hear its cancel, until the feed ends or it goes."""
        gone = False
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                nonlocal gone
                await self._watch_renter(fs, feed, adapter)
                gone = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                await stream_feed(fs, feed, self._seal, log_from=log_from, clock=self.clock, heartbeats=v2)
            except StreamError:
                gone = True
            nursery.cancel_scope.cancel()
        if not gone or feed.closed or (feed.state is not None and feed.state.terminal):
            return
        if feed.stop_on_disconnect and feed.stop is not None:
            log.info("job %s: the renter left; stopping it (stop_on_disconnect)", feed.job_id[:12])
            await feed.stop("the renter left")
        else:
            log.info("job %s: the renter's stream broke; the job runs on (it may re-attach)", feed.job_id[:12])

    async def _check_escrow(self, agreement: Agreement) -> None:
        """The escrow must still fund the agreement when the job comes (bait-and-switch)."""
        if self.escrow is None:
            return
        problem = await self.escrow.problem(agreement.terms)
        if problem is None:
            return
        self.inventory.release(agreement.agreement_id)  # this agreement will never run
        if self.on_abandoned is not None:
            self.on_abandoned(agreement.terms.renter)
        raise RemoteProtocolError(f"the escrow no longer funds this agreement: {problem}",
                                  reject_code=RejectCode.ESCROW_INVALID)

    async def _send_quiet(self, fs: FramedStream, message: Any) -> bool:
        try:
            await fs.write_frame(self._seal(message))
        except StreamError:
            return False
        return True

    async def _job_task(self, feed: JobFeed, agreement: Agreement, request: JobRequest,
                        renter: PublicKey) -> None:
        """Run one agreement's job to its end, writing its events into ``feed`` (then closed)."""
        job_id = agreement.agreement_id
        seq = 0

        async def status(state: JobState, exit_code: int | None = None, reason: str = "") -> None:
            nonlocal seq
            feed.add_status(JobStatus(job_id=job_id, seq=seq, state=state, at=self.clock(),
                                      exit_code=exit_code, reason=reason[:512]))
            seq += 1

        self.running.add(job_id)
        job = _Stopper()
        feed.stop = job.stop
        try:
            await self._start_and_follow(feed, agreement, request, renter, status, job)
        except Exception:  # supervisor: one job's failure must not take the provider down
            log.exception("job %s failed in the job server", job_id[:12])
        finally:
            self.running.discard(job_id)
            self.inventory.release(job_id)
            feed.close(self.clock())
            if job.escrow_started and not job.billed and self.escrow is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(30):
                    await self.escrow.settle(agreement.terms)  # started, but no job ran: refund
            workdir = self._workdir(job_id)
            if workdir is not None:
                await trio.to_thread.run_sync(lambda: shutil.rmtree(workdir, ignore_errors=True))

    async def _start_and_follow(self, feed: JobFeed, agreement: Agreement, request: JobRequest,  # noqa: PLR0917
                                renter: PublicKey, status: Callable[..., Awaitable[None]],
                                job: _Stopper) -> None:
        """Money before work: inputs, then the escrow started (and seen started), then the job."""
        job_id = agreement.agreement_id
        executor = self.executor_for(request.executor)
        await status(JobState.ACCEPTED)
        if executor is None:
            await status(JobState.FAILED, reason=f"no {request.executor} executor here")
            return
        await status(JobState.STARTING)
        limits = ResourceLimits(time_limit_s=time_limit_s(request, agreement.terms.max_minutes,
                                                          self.limits_cap)).clamp(self.limits_cap)
        workdir = self._workdir(job_id)
        inputs: dict[str, Path] = {}
        with job.starting:
            try:
                inputs = await self._fetch_inputs(feed.peer, request, workdir)
            except (BlobError, NetworkError, OSError) as exc:
                log.info("job %s: input fetch failed: %s", job_id[:12], exc)
                await status(JobState.FAILED, reason=f"could not fetch the inputs: {exc}")
                return
        if job.reasons:
            await status(JobState.CANCELLED, reason=job.reasons[0])
            return
        if request.inputs and workdir is None:
            await status(JobState.FAILED, reason="this provider does not accept job inputs")
            return
        if self.escrow is not None:
            problem = await self.escrow.start(agreement.terms)
            job.escrow_started = problem is None
            if problem is not None:
                await status(JobState.FAILED, reason=f"the escrow could not be started: {problem}")
                return
        if job.reasons:
            await status(JobState.CANCELLED, reason=job.reasons[0])
            return
        lease = self.inventory.lease_of(job_id)  # held since _check_agreement
        command, script = job_payload(request)
        spec = JobSpec(job_id=job_id, rental_id=str(agreement.terms.escrow.rental_id),
                       command=command, image=request.image, script=script,
                       env=dict(request.env), limits=limits, network=request.egress, inputs=inputs,
                       output_dir=workdir / "outputs" if workdir is not None else None,
                       gpu_uuids=lease.device_ids if lease is not None else ())
        try:
            handle = await executor.start(spec, limits)
        except ExecutionError as exc:
            await status(JobState.FAILED, reason=f"could not start: {exc}")
            return
        job.handle = handle
        try:
            if job.reasons:  # the renter cancelled while the job was being started
                await handle.stop(grace_s=5)
            await status(JobState.RUNNING)
            if self.grants is not None:
                self.grants.open(job_id, request, renter)  # ended below, with the job
            job_done = trio.Event()
            if self.on_running is not None:
                job.billed = True
                self.on_running(agreement, job.stop, job_done)
            try:
                final = await self._follow(feed, handle, job_id)
            finally:
                job_done.set()
            state = _EXIT_STATE.get(final.reason, JobState.FAILED)
            reason = job.reasons[0] if job.reasons else final.detail or final.reason
            await status(state, _clamp_exit(final.exit_code), reason)
            self.finished[job_id] = state
            if state is JobState.FINISHED and spec.output_dir is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(15):
                    await handle.cleanup()  # idempotent; copies the outputs out
                assert self.blobs is not None  # an output folder only with transfers on
                ref = await shelve_result(self.blobs, self.pusher, job_id, spec.output_dir,
                                          renter=renter.wallet, upload=request.result_upload)
                if ref is not None:
                    feed.set_result(ref)
        finally:
            if self.grants is not None:
                self.grants.end(job_id)  # cuts every forwarded connection and shell of the job
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await handle.cleanup()

    def _workdir(self, job_id: str) -> Path | None:
        """The job's transfer folder (fetched inputs, copied outputs), if transfers are on."""
        if self.blobs is None or self.node is None or self.transfer_root is None:
            return None
        return self.transfer_root / job_id

    async def _fetch_inputs(self, renter_peer: str, request: JobRequest,
                            workdir: Path | None) -> dict[str, Path]:
        """Fetch every input from the renter into ``workdir/inputs``; path in the job → file."""
        if not request.inputs or workdir is None or self.node is None or self.blobs is None:
            return {}
        files: dict[str, Path] = {}
        budget = MAX_INPUT_BYTES
        for i, ref in enumerate(request.inputs):
            dest = workdir / "inputs" / f"{i:02d}"  # never the renter's name: no path games
            size = await fetch_blob(self.node, renter_peer, ref.cid, dest,
                                    max_bytes=min(budget, self.blobs.max_blob_bytes))
            budget -= size
            files[ref.path] = dest
        return files

    async def _watch_renter(self, fs: FramedStream, feed: JobFeed, adapter: Any) -> None:
        """Until the stream breaks (returns then: the renter is gone): a JobCancel stops the job,
        whatever its state."""
        while True:
            try:
                data = await fs.read_frame(timeout_s=3600)
            except ReadTimeoutError:
                continue
            except StreamError:
                return
            try:
                opened = open_envelope(data, adapter, now=self.clock(), max_bytes=MAX_FRAME_BYTES,
                                       replay_cache=self.replay_cache, max_ttl=ENVELOPE_TTL_S,
                                       expected_signer=feed.renter)
            except RemoteProtocolError as exc:
                log.info("job %s: ignoring a bad frame from the renter: %s", feed.job_id[:12], exc)
                continue
            if isinstance(opened.message, JobCancel) and opened.message.job_id == feed.job_id:
                log.info("job %s: cancelled by the renter", feed.job_id[:12])
                if feed.stop is not None:
                    await feed.stop("cancelled by the renter")

    async def _follow(self, feed: JobFeed, handle: JobHandle, job_id: str) -> ExitStatus:
        """Record logs and usage receipts until the job exits; returns how it ended."""

        async def pump_logs() -> None:
            async for chunk in handle.logs():
                text = chunk.data.decode("utf-8", errors="replace")
                for i in range(0, max(len(text), 1), MAX_LOG_CHUNK_CHARS):
                    await feed.add_log(chunk.stream, text[i:i + MAX_LOG_CHUNK_CHARS])

        async def pump_usage() -> None:
            usage = getattr(handle, "usage", None)  # durable jobs meter their minutes
            if usage is None:
                return
            async for receipt in usage(job_id):
                feed.add_receipt(receipt)

        async with trio.open_nursery() as pumps:
            pumps.start_soon(pump_usage)
            await pump_logs()
        return await handle.wait()


class _Stopper:
    """How one job is stopped, whatever its state: before it starts, its start is cancelled;
    after, its handle is stopped (SIGTERM, grace, SIGKILL)."""

    def __init__(self) -> None:
        self.handle: JobHandle | None = None
        self.starting = trio.CancelScope()
        self.reasons: list[str] = []
        #: the escrow was started for this job, and billing took it over (it settles it)
        self.escrow_started = False
        self.billed = False

    async def stop(self, reason: str) -> None:
        self.reasons.append(reason)
        if self.handle is None:
            self.starting.cancel()
        else:
            await self.handle.stop(grace_s=5)
