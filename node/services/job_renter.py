"""``/dgpu/job/1.1.0``, the renter's side (:func:`run_job`): submit an Agreement's job (or
re-attach to it) and follow it.

It submits (or sends ``JobAttach`` with the first log chunk it has not seen), feeds every event to
:class:`dgpu.protocol.job_session.JobSession` (which refuses gaps and illegal moves) and returns
the final status. It never hangs on a dead or hung provider: a closed stream fails at once, and
the provider sends a heartbeat at least every ``HEARTBEAT_INTERVAL_S``, so when no frame at all
arrives for ``silence_s`` (``SILENCE_BOUND_S``) the renter gives up and says what it knew: a job
heard FINISHED before the silence is returned as finished (its result reference may be
missing), any other raises :class:`ProviderSilentError` with the last state, log offset and
metered minutes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

from dgpu.node.errors import JobLostError, ProviderSilentError, ReadTimeoutError, RejectedError, StreamError
from dgpu.node.ports.network import FramedStream, Network
from dgpu.node.services.job_stream import ENVELOPE_TTL_S, Clock, Nonce
from dgpu.protocol.envelope import ReplayCache, open_envelope, seal
from dgpu.protocol.errors import RemoteProtocolError
from dgpu.protocol.ids import JOB_PROTOCOL_V2, MAX_FRAME_BYTES
from dgpu.protocol.job_frames import SILENCE_BOUND_S, TO_RENTER_JOB_V2, JobAttach
from dgpu.protocol.job_session import JobSession
from dgpu.protocol.keys import PublicKey, SigningKey
from dgpu.protocol.messages import (
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
                  cancel: trio.Event | None = None, silence_s: float = SILENCE_BOUND_S,
                  attach_from: int | None = None) -> JobOutcome:
    """Submit the job an Agreement covers (or, with ``attach_from``, re-attach to it with the logs
    from that chunk on) and follow it to the end.

    Raises ProviderSilentError when the provider is heard from for ``silence_s`` no more,
    JobLostError when it dies or breaks the session's rules; RejectedError when it refuses the
    submit (or the re-attach); NetworkError when it cannot be reached at all.
    """
    provider_key = PublicKey.from_wallet(agreement.terms.provider)
    job_id = agreement.agreement_id
    session = JobSession(job_id, attach_from=attach_from)
    replay = ReplayCache(capacity=100_000)  # one job's frames (bounded by the log volume)

    def sealed(message: Any) -> bytes:
        now = clock()
        return seal(message, key, nonce=nonce(), issued_at=now, expires_at=now + ENVELOPE_TTL_S)

    fs = await node.open_stream(provider_peer, JOB_PROTOCOL_V2, max_frame_bytes=MAX_FRAME_BYTES,
                                read_timeout_s=silence_s)
    chunks = 0
    try:
        first = (JobSubmit(agreement=agreement) if attach_from is None
                 else JobAttach(job_id=job_id, log_offset=attach_from))
        await fs.write_frame(sealed(first))
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            if cancel is not None:
                async def send_cancel() -> None:
                    await cancel.wait()
                    with contextlib.suppress(StreamError):
                        await fs.write_frame(sealed(JobCancel(job_id=job_id,
                                                              reason="cancelled by the renter")))
                nursery.start_soon(send_cancel)
            reader = _Reader(fs, session, provider_key, replay, clock, silence_s)
            try:
                chunks = await _follow(reader, on_log, on_status)
                if session.state is JobState.FINISHED:
                    await _read_result(reader)
            except (JobLostError, RejectedError) as exc:
                failure = exc  # raised below, outside the nursery (no ExceptionGroup)
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        assert session.state is not None
        reason = session.reason
        if reader.silent_after_end:
            note = "the provider went silent after the job finished; its result reference was not received"
            reason = f"{reason}; {note}" if reason else note
        return JobOutcome(job_id, session.state, session.exit_code, reason, chunks,
                          session.result, tuple(session.receipts))
    finally:
        await fs.close()


class _Reader:
    """Reads, checks and feeds the provider's frames to the session; knows the silence bound."""

    def __init__(self, fs: FramedStream, session: JobSession, provider_key: PublicKey,  # noqa: PLR0917
                 replay: ReplayCache, clock: Clock, silence_s: float) -> None:
        self.fs, self.session, self.provider_key = fs, session, provider_key
        self.replay, self.clock, self.silence_s = replay, clock, silence_s
        self.silent_after_end = False

    async def next(self) -> Any:
        """The next message (already fed to the session); raises on silence, a close or a bad frame."""
        session = self.session
        try:
            data = await self.fs.read_frame(timeout_s=self.silence_s)
        except ReadTimeoutError:
            beat = session.heartbeat
            raise ProviderSilentError(
                f"the provider sent nothing for {self.silence_s:.0f} s (not even a heartbeat); last state "
                f"{session.state or 'none'}, {session.next_log_seq} log chunk(s), {session.minutes} metered "
                f"minute(s) received" + (f", it had {beat.next_log_seq} chunk(s) and {beat.minutes} minute(s) "
                                         "at its last heartbeat" if beat is not None else ""),
                state=str(session.state) if session.state else None, next_log_seq=session.next_log_seq,
                minutes=session.minutes) from None
        except StreamError as exc:
            raise JobLostError(f"the provider closed the job stream before the job ended (last state: "
                               f"{session.state or 'none'})") from exc
        try:
            opened = open_envelope(data, TO_RENTER_JOB_V2, now=self.clock(), max_bytes=MAX_FRAME_BYTES,
                                   replay_cache=self.replay, max_ttl=ENVELOPE_TTL_S,
                                   expected_signer=self.provider_key)
            msg = opened.message
            if isinstance(msg, Reject):
                raise RejectedError(str(msg.code), msg.message)
            session.receive(msg)
        except RemoteProtocolError as exc:
            raise JobLostError(f"provider broke the job protocol: {exc}") from exc
        return msg


async def _follow(reader: _Reader, on_log: LogSink | None,
                  on_status: Callable[[JobStatus], None] | None) -> int:
    """Read the provider's events until the final status; returns the log chunk count."""
    chunks = 0
    while not reader.session.done:
        msg = await reader.next()
        if isinstance(msg, LogChunk):
            chunks += 1
            if on_log is not None:
                maybe = on_log(msg)
                if maybe is not None:
                    await maybe
        elif isinstance(msg, JobStatus) and on_status is not None:
            on_status(msg)
    return chunks


async def _read_result(reader: _Reader) -> None:
    """After FINISHED: wait (bounded) for the ResultRef; a closed stream means there is none."""
    session = reader.session
    with trio.move_on_after(RESULT_WAIT_S):
        while session.result is None:
            try:
                await reader.next()  # the session lets only heartbeats and the result through
            except ProviderSilentError:
                reader.silent_after_end = True  # it had finished: what we know is kept
                return
            except JobLostError as exc:  # closed (no outputs kept) or a bad frame
                if exc.__cause__ is not None and not isinstance(exc.__cause__, StreamError):
                    log.info("job %s: ignoring a bad frame after the end: %s", session.job_id[:12], exc)
                return
            except RejectedError:
                return
