"""The job session as the renter sees it: a sans-I/O checker of the provider's event stream.

Theory of operation: after the Agreement the renter submits the job and the provider streams
``JobStatus``, ``LogChunk``, ``UsageReceipt`` and finally ``ResultRef`` messages. Each kind has its
own gap-free sequence, and statuses follow :data:`JOB_TRANSITIONS`; logs and usage come before
the terminal status, a result after it. Anything out of order, duplicated or after the end
raises :class:`RemoteProtocolError` and leaves the session unchanged, so the caller can report a
clear failure instead of silently showing a wrong log.

On ``/dgpu/job/1.1.0`` heartbeats may come at any time (the last one is kept: what the provider
had produced when it was last heard). A re-attach session (``attach_from``) first gets
``JobAttached``, whose offset (at least the one asked) is where its log sequence resumes; the
statuses and receipts are replayed from the start.
"""

from __future__ import annotations

from typing import Final

from .errors import RemoteProtocolError
from .job_frames import JobAttached, JobHeartbeat
from .messages import JobState, JobStatus, LogChunk, RejectCode, ResultRef, UsageReceipt

__all__ = ["JOB_TRANSITIONS", "JobSession", "JobStreamMessage"]

JobStreamMessage = JobStatus | LogChunk | UsageReceipt | ResultRef | JobHeartbeat | JobAttached

_ENDINGS = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})
#: the states a job may move to from each state (and from "nothing yet" = None)
JOB_TRANSITIONS: Final[dict[JobState | None, frozenset[JobState]]] = {
    None: frozenset({JobState.ACCEPTED}) | _ENDINGS,
    JobState.ACCEPTED: frozenset({JobState.STARTING}) | _ENDINGS,
    JobState.STARTING: frozenset({JobState.RUNNING}) | _ENDINGS,
    JobState.RUNNING: frozenset({JobState.FINISHED}) | _ENDINGS,
    JobState.FINISHED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.EXPIRED: frozenset(),
}


#: usage receipts a session keeps (a week of minutes; later ones are still checked and counted)
MAX_KEPT_RECEIPTS = 7 * 24 * 60


class JobSession:
    """Validates the provider's stream for one job; keeps its usage receipts (``receipts``)."""

    def __init__(self, job_id: str, *, attach_from: int | None = None) -> None:
        self.job_id = job_id
        #: a re-attach asked for the logs from this seq; None: a submit session
        self.attach_from = attach_from
        self.attached = attach_from is None
        #: the last heartbeat heard (None: none yet, or an older provider)
        self.heartbeat: JobHeartbeat | None = None
        self.state: JobState | None = None
        self.exit_code: int | None = None
        self.reason = ""
        self.next_status_seq = 0
        self.next_log_seq = 0
        self.minutes = 0
        #: the receipts received, in minute order (the first MAX_KEPT_RECEIPTS)
        self.receipts: list[UsageReceipt] = []
        self.result: ResultRef | None = None

    @property
    def done(self) -> bool:
        return self.state is not None and self.state.terminal

    def receive(self, message: JobStreamMessage) -> None:
        if message.job_id != self.job_id:
            raise _refuse(f"message for job {message.job_id}, expected {self.job_id}")
        if isinstance(message, JobHeartbeat):
            self.heartbeat = message
            return
        if isinstance(message, JobAttached):
            if self.attached or self.attach_from is None or message.log_offset < self.attach_from:
                raise _refuse("job_attached comes once, first, at or after the offset asked")
            self.attached, self.next_log_seq = True, message.log_offset
            return
        if not self.attached:
            raise _refuse(f"{message.type} before job_attached")
        if isinstance(message, ResultRef):
            if self.state is not JobState.FINISHED or self.result is not None:
                raise _refuse("a result comes once, after the job finished")
            self.result = message
            return
        if self.done:
            raise _refuse(f"{message.type} after the job ended")
        if isinstance(message, JobStatus):
            if message.seq != self.next_status_seq:
                raise _refuse(f"status seq {message.seq}, expected {self.next_status_seq}")
            if message.state not in JOB_TRANSITIONS[self.state]:
                raise _refuse(f"job cannot move from {self.state} to {message.state}")
            self.state, self.next_status_seq = message.state, message.seq + 1
            if message.state.terminal:
                self.exit_code, self.reason = message.exit_code, message.reason
        elif isinstance(message, LogChunk):
            if message.seq != self.next_log_seq:
                raise _refuse(f"log seq {message.seq}, expected {self.next_log_seq}")
            self.next_log_seq += 1
        else:
            if message.minute_index != self.minutes or message.minutes_total != self.minutes + 1:
                raise _refuse(f"usage for minute {message.minute_index}, expected {self.minutes}")
            self.minutes += 1
            if len(self.receipts) < MAX_KEPT_RECEIPTS:
                self.receipts.append(message)


def _refuse(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reject_code=RejectCode.PROTOCOL_ERROR)
