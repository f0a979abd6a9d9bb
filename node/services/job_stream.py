"""``/dgpu/job/1.0.0`` on both sides: submit, ordered status and log events, cancel, exit code.

Provider (:class:`JobServer`): the renter opens the stream and sends ``JobSubmit`` carrying the
Agreement. The provider checks both signatures, that it signed this agreement itself and has
not run it yet (:class:`~dgpu.node.services.negotiation.AgreementStore`), then runs the job on
the GPUs of the agreement's lease (``JobSpec.gpu_uuids``, released when the job ends) and
streams ``JobStatus`` (accepted → starting → running → final, with the exit code) and
``LogChunk`` frames in order, all through one writer lock. A ``JobCancel`` from the renter
stops the job; a renter that disappears stops it too (nobody would pay for it).

Renter (:func:`run_job`): submits, feeds every event to
:class:`dgpu.protocol.job_session.JobSession` (which refuses gaps and illegal moves) and
returns the final status. It never hangs on a dead provider: a closed stream fails at once,
and when no frame arrives for ``idle_probe_s`` it pings the provider and gives up if the ping
fails.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import trio

from dgpu.node.errors import (
    ExecutionError,
    JobLostError,
    NetworkError,
    ReadTimeoutError,
    RejectedError,
    StreamError,
)
from dgpu.node.ports.execution import ExitReason, JobHandle, JobSpec, ResourceLimits
from dgpu.node.ports.network import FramedStream, Network
from dgpu.node.services.blobs import BlobError, BlobShelf, fetch_blob, pack_dir
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.negotiation import AgreementStore, reject_code
from dgpu.protocol.envelope import ReplayCache, open_envelope, seal, verify_detached
from dgpu.protocol.errors import RemoteProtocolError
from dgpu.protocol.ids import JOB_PROTOCOL, MAX_FRAME_BYTES, MAX_LOG_CHUNK_CHARS
from dgpu.protocol.job_session import JobSession
from dgpu.protocol.keys import PublicKey, SigningKey
from dgpu.protocol.messages import (
    TO_PROVIDER_JOB,
    TO_RENTER_JOB,
    Agreement,
    Executor,
    JobCancel,
    JobRequest,
    JobState,
    JobStatus,
    JobSubmit,
    LogChunk,
    Reject,
    RejectCode,
    ResultRef,
    UsageReceipt,
)

__all__ = ["JobOutcome", "JobServer", "run_job"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]
Nonce = Callable[[], bytes]

ENVELOPE_TTL_S: Final = 300
#: the submit must arrive quickly after the stream opens
SUBMIT_READ_TIMEOUT_S: Final = 10.0
#: how long the provider keeps a job's packed result for the renter to fetch
RESULT_TTL_S: Final = 3600.0
#: all of one job's inputs together (each is also bounded by the shelf's blob limit)
MAX_INPUT_BYTES: Final = 4 * 1024**3
#: after FINISHED the renter waits this long for the ResultRef (packing a big output folder)
RESULT_WAIT_S: Final = 120.0


class ExecutorLike(Protocol):
    async def start(self, spec: JobSpec, limits: ResourceLimits) -> JobHandle: ...


#: called when a job starts running: (agreement, stop(reason), job_done). The provider's billing
#: uses it to start the escrow, claim, and stop the job when the money runs out; it must only
#: schedule work (in a long-lived nursery) and return at once.
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
                 transfer_root: Path | None = None) -> None:
        self.key = key
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
        try:
            data = await fs.read_frame(timeout_s=SUBMIT_READ_TIMEOUT_S)
            opened = open_envelope(data, TO_PROVIDER_JOB, now=self.clock(),
                                   max_bytes=MAX_FRAME_BYTES, replay_cache=self.replay_cache,
                                   max_ttl=ENVELOPE_TTL_S)
            submit = opened.message
            if not isinstance(submit, JobSubmit):
                raise RemoteProtocolError("a job stream starts with job_submit",
                                          reject_code=RejectCode.PROTOCOL_ERROR)
            request = self._check_agreement(submit.agreement, opened.signer)
        except RemoteProtocolError as exc:
            log.info("job submit from %s refused: %s", fs.remote_peer, exc)
            # no request id may be known yet; answer with a zero id so the renter sees why
            await self._send_quiet(fs, Reject(request_id="0" * 16, code=reject_code(exc.reject_code),
                                              message=str(exc)[:200]))
            return
        except StreamError as exc:
            log.info("job stream from %s ended before submit: %s", fs.remote_peer, exc)
            return
        await self._run(fs, submit.agreement, request, opened.signer)

    async def _send_quiet(self, fs: FramedStream, message: Any) -> bool:
        try:
            await fs.write_frame(self._seal(message))
        except StreamError:
            return False
        return True

    async def _run(self, fs: FramedStream, agreement: Agreement, request: JobRequest,
                   renter: PublicKey) -> None:
        job_id = agreement.agreement_id
        seq = 0

        async def status(state: JobState, exit_code: int | None = None, reason: str = "") -> None:
            nonlocal seq
            msg = JobStatus(job_id=job_id, seq=seq, state=state, at=self.clock(),
                            exit_code=exit_code, reason=reason[:512])
            seq += 1
            await fs.write_frame(self._seal(msg))

        executor = self.executor_for(request.executor)
        self.running.add(job_id)
        try:
            await status(JobState.ACCEPTED)
            if executor is None:
                await status(JobState.FAILED, reason=f"no {request.executor} executor here")
                return
            await status(JobState.STARTING)
            limits = ResourceLimits(time_limit_s=float(agreement.terms.max_minutes * 60)).clamp(
                self.limits_cap)
            workdir = self._workdir(job_id)
            try:
                inputs = await self._fetch_inputs(fs.remote_peer, request, workdir)
            except (BlobError, NetworkError, OSError) as exc:
                log.info("job %s: input fetch failed: %s", job_id[:12], exc)
                await status(JobState.FAILED, reason=f"could not fetch the inputs: {exc}")
                return
            if request.inputs and workdir is None:
                await status(JobState.FAILED, reason="this provider does not accept job inputs")
                return
            lease = self.inventory.lease_of(job_id)  # held since _check_agreement
            spec = JobSpec(job_id=job_id, rental_id=str(agreement.terms.escrow.rental_id),
                           command=request.command, image=request.image, script=request.script,
                           env=dict(request.env), limits=limits, network=request.egress, inputs=inputs,
                           output_dir=workdir / "outputs" if workdir is not None else None,
                           gpu_uuids=lease.device_ids if lease is not None else ())
            try:
                handle = await executor.start(spec, limits)
            except ExecutionError as exc:
                await status(JobState.FAILED, reason=f"could not start: {exc}")
                return
            try:
                await status(JobState.RUNNING)
                stopped_for: list[str] = []
                job_done = trio.Event()

                async def stop(reason: str) -> None:
                    stopped_for.append(reason)
                    await handle.stop(grace_s=5)

                if self.on_running is not None:
                    self.on_running(agreement, stop, job_done)
                try:
                    final = await self._supervise(fs, handle, job_id, renter)
                finally:
                    job_done.set()
                if final is None:  # the renter vanished: the job was stopped
                    return
                state = _EXIT_STATE.get(final.reason, JobState.FAILED)
                reason = stopped_for[0] if stopped_for else final.detail or final.reason
                await status(state, _clamp_exit(final.exit_code), reason)
                self.finished[job_id] = state
                if state is JobState.FINISHED and spec.output_dir is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(15):
                        await handle.cleanup()  # idempotent; copies the outputs out
                    ref = await self._shelve_result(job_id, spec.output_dir, renter.wallet)
                    if ref is not None:
                        await fs.write_frame(self._seal(ref))
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(15):
                    await handle.cleanup()
        except StreamError as exc:
            log.info("job %s: renter stream broke: %s", job_id[:12], exc)
        finally:
            self.running.discard(job_id)
            self.inventory.release(job_id)
            workdir = self._workdir(job_id)
            if workdir is not None:
                await trio.to_thread.run_sync(lambda: shutil.rmtree(workdir, ignore_errors=True))

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

    async def _shelve_result(self, job_id: str, output_dir: Path, renter: str) -> ResultRef | None:
        """Pack the job's outputs into one blob only the renter may fetch; None on failure."""
        assert self.blobs is not None
        tmp = self.blobs.temp_path()
        try:
            size = await trio.to_thread.run_sync(pack_dir, output_dir, tmp)
            if size > self.blobs.max_blob_bytes:
                raise BlobError(f"the packed result is {size} bytes, over the blob limit")
            entry = await self.blobs.add_file(tmp, allowed=[renter], ttl_s=RESULT_TTL_S, move=True)
        except (BlobError, OSError) as exc:
            log.warning("job %s: could not keep the result: %s", job_id[:12], exc)
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return ResultRef(job_id=job_id, cid=entry.cid, size=entry.size)

    async def _supervise(self, fs: FramedStream, handle: JobHandle, job_id: str,
                         renter: PublicKey) -> Any:
        """Stream logs, watch for a cancel; returns the ExitStatus, or None if the renter left."""
        result: list[Any] = []
        renter_gone = False

        async def pump_logs() -> None:
            log_seq = 0
            async for chunk in handle.logs():
                text = chunk.data.decode("utf-8", errors="replace")
                for i in range(0, max(len(text), 1), MAX_LOG_CHUNK_CHARS):
                    piece = text[i:i + MAX_LOG_CHUNK_CHARS]
                    await fs.write_frame(self._seal(LogChunk(job_id=job_id, seq=log_seq,
                                                             stream=chunk.stream, data=piece)))
                    log_seq += 1

        async def watch_renter(cancel_scope: trio.CancelScope) -> None:
            nonlocal renter_gone
            while True:
                try:
                    data = await fs.read_frame(timeout_s=3600)
                except ReadTimeoutError:
                    continue
                except StreamError:
                    renter_gone = True
                    await handle.stop(grace_s=5)
                    return
                try:
                    opened = open_envelope(data, TO_PROVIDER_JOB, now=self.clock(),
                                           max_bytes=MAX_FRAME_BYTES,
                                           replay_cache=self.replay_cache,
                                           max_ttl=ENVELOPE_TTL_S, expected_signer=renter)
                except RemoteProtocolError as exc:
                    log.info("job %s: ignoring a bad frame from the renter: %s", job_id[:12], exc)
                    continue
                if isinstance(opened.message, JobCancel) and opened.message.job_id == job_id:
                    log.info("job %s: cancelled by the renter", job_id[:12])
                    await handle.stop(grace_s=5)
                    return

        async with trio.open_nursery() as nursery:
            watcher_scope = trio.CancelScope()

            async def watcher() -> None:
                with watcher_scope:
                    await watch_renter(watcher_scope)

            nursery.start_soon(watcher)

            async def pump_usage() -> None:
                usage = getattr(handle, "usage", None)  # durable jobs meter their minutes
                if usage is None:
                    return
                with contextlib.suppress(StreamError):
                    async for receipt in usage(job_id):
                        await fs.write_frame(self._seal(receipt))

            async def logs_then_wait() -> None:
                # on a broken stream the watcher notices and stops the job
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(pump_usage)
                    with contextlib.suppress(StreamError):
                        await pump_logs()
                result.append(await handle.wait())
                watcher_scope.cancel()

            nursery.start_soon(logs_then_wait)
        return None if renter_gone else result[0]


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job_id: str
    state: JobState
    exit_code: int | None
    reason: str
    log_chunks: int
    #: the packed output folder, when the job FINISHED and the provider kept one
    result: ResultRef | None = None
    receipts: tuple[UsageReceipt, ...] = ()  #: the signed per-minute usage (GPU samples) received


LogSink = Callable[[LogChunk], Awaitable[None] | None]


async def run_job(node: Network, key: SigningKey, agreement: Agreement, provider_peer: str, *,
                  clock: Clock, nonce: Nonce, on_log: LogSink | None = None,
                  on_status: Callable[[JobStatus], None] | None = None,
                  cancel: trio.Event | None = None, idle_probe_s: float = 10.0) -> JobOutcome:
    """Submit the job an Agreement covers and follow it to the end.

    Raises JobLostError when the provider dies, hangs (no frame and no ping answer) or breaks
    the session's rules; RejectedError when it refuses the submit; NetworkError when it cannot
    be reached at all.
    """
    provider_key = PublicKey.from_wallet(agreement.terms.provider)
    job_id = agreement.agreement_id
    session = JobSession(job_id)
    replay = ReplayCache(capacity=100_000)  # one job's frames (bounded by the log volume)

    def sealed(message: Any) -> bytes:
        now = clock()
        return seal(message, key, nonce=nonce(), issued_at=now, expires_at=now + ENVELOPE_TTL_S)

    fs = await node.open_stream(provider_peer, JOB_PROTOCOL, max_frame_bytes=MAX_FRAME_BYTES,
                                read_timeout_s=idle_probe_s)
    chunks = 0
    try:
        await fs.write_frame(sealed(JobSubmit(agreement=agreement)))
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            if cancel is not None:
                async def send_cancel() -> None:
                    await cancel.wait()
                    with contextlib.suppress(StreamError):
                        await fs.write_frame(sealed(JobCancel(job_id=job_id,
                                                              reason="cancelled by the renter")))
                nursery.start_soon(send_cancel)
            try:
                chunks = await _follow(node, fs, session, provider_peer, provider_key, replay,
                                       clock, on_log, on_status, idle_probe_s)
                if session.state is JobState.FINISHED:
                    await _read_result(fs, session, provider_key, replay, clock)
            except (JobLostError, RejectedError) as exc:
                failure = exc  # raised below, outside the nursery (no ExceptionGroup)
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        assert session.state is not None
        return JobOutcome(job_id, session.state, session.exit_code, session.reason, chunks,
                          session.result, tuple(session.receipts))
    finally:
        await fs.close()


async def _follow(node: Network, fs: FramedStream, session: JobSession, provider_peer: str,  # noqa: PLR0917
                  provider_key: PublicKey, replay: ReplayCache, clock: Clock,
                  on_log: LogSink | None, on_status: Callable[[JobStatus], None] | None,
                  idle_probe_s: float) -> int:
    """Read the provider's events until the final status; returns the log chunk count."""
    chunks = 0
    while not session.done:
        try:
            data = await fs.read_frame(timeout_s=idle_probe_s)
        except ReadTimeoutError:
            if await node.ping(provider_peer):
                continue  # alive and busy: a silent job is fine
            raise JobLostError(f"provider {provider_peer} stopped answering") from None
        except StreamError as exc:
            raise JobLostError(
                f"provider {provider_peer} closed the job stream before the job "
                f"ended (last state: {session.state or 'none'})") from exc
        try:
            opened = open_envelope(data, TO_RENTER_JOB, now=clock(), max_bytes=MAX_FRAME_BYTES,
                                   replay_cache=replay, max_ttl=ENVELOPE_TTL_S,
                                   expected_signer=provider_key)
            msg = opened.message
            if isinstance(msg, Reject):
                raise RejectedError(str(msg.code), msg.message)
            session.receive(msg)
        except RemoteProtocolError as exc:
            raise JobLostError(f"provider broke the job protocol: {exc}") from exc
        if isinstance(msg, LogChunk):
            chunks += 1
            if on_log is not None:
                maybe = on_log(msg)
                if maybe is not None:
                    await maybe
        elif isinstance(msg, JobStatus) and on_status is not None:
            on_status(msg)
    return chunks


async def _read_result(fs: FramedStream, session: JobSession, provider_key: PublicKey,
                       replay: ReplayCache, clock: Clock) -> None:
    """After FINISHED: wait (bounded) for the ResultRef; a closed stream means there is none."""
    with trio.move_on_after(RESULT_WAIT_S):
        while session.result is None:
            try:
                data = await fs.read_frame(timeout_s=RESULT_WAIT_S)
            except StreamError:  # closed (an older provider, or no outputs kept) or timed out
                return
            try:
                opened = open_envelope(data, TO_RENTER_JOB, now=clock(), max_bytes=MAX_FRAME_BYTES,
                                       replay_cache=replay, max_ttl=ENVELOPE_TTL_S,
                                       expected_signer=provider_key)
                if not isinstance(opened.message, ResultRef):
                    raise RemoteProtocolError(f"{opened.message.type} after the job ended")
                session.receive(opened.message)
            except RemoteProtocolError as exc:
                log.info("job %s: ignoring a bad frame after the end: %s", session.job_id[:12], exc)
                return
