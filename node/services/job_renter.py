"""``/dgpu/job/1.0.0``, the renter's side (:func:`run_job`): submit an Agreement's job and follow it.

It submits, feeds every event to :class:`dgpu.protocol.job_session.JobSession` (which refuses
gaps and illegal moves) and returns the final status. It never hangs on a dead provider: a
closed stream fails at once, and when no frame arrives for ``idle_probe_s`` it pings the
provider and gives up if the ping fails.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

from dgpu.node.errors import JobLostError, ReadTimeoutError, RejectedError, StreamError
from dgpu.node.ports.network import FramedStream, Network
from dgpu.node.services.job_stream import ENVELOPE_TTL_S, Clock, Nonce
from dgpu.protocol.envelope import ReplayCache, open_envelope, seal
from dgpu.protocol.errors import RemoteProtocolError
from dgpu.protocol.ids import JOB_PROTOCOL, MAX_FRAME_BYTES
from dgpu.protocol.job_session import JobSession
from dgpu.protocol.keys import PublicKey, SigningKey
from dgpu.protocol.messages import (
    TO_RENTER_JOB,
    Agreement,
    JobCancel,
    JobState,
    JobStatus,
    JobSubmit,
    LogChunk,
    Reject,
    ResultRef,
    UsageReceipt,
)

__all__ = ["JobOutcome", "run_job"]

log = logging.getLogger(__name__)

#: after FINISHED the renter waits this long for the ResultRef (packing a big output folder)
RESULT_WAIT_S: Final = 120.0


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
