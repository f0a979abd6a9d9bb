"""Frames of ``/dgpu/job/1.1.0``: the job stream of 1.0.0 plus heartbeats and re-attach.

A breaking change to 1.0.0 (a 1.0.0 renter would refuse a heartbeat), so it has its own protocol
id, served beside the old one. On 1.1.0:

- the provider sends :class:`JobHeartbeat` whenever it has sent nothing for
  :data:`HEARTBEAT_INTERVAL_S`, so a renter that hears nothing for :data:`SILENCE_BOUND_S` knows
  the provider (or the path to it) is hung, whatever the job is doing;
- a renter whose node went away opens a new stream with :class:`JobAttach` (signed by the
  agreement's renter) naming the first log chunk it has not seen; the provider answers
  :class:`JobAttached` with the offset the logs resume at (later than asked when its bounded log
  buffer dropped older chunks), then replays every status and usage receipt from the start,
  the logs from that offset, and goes on as on a submit stream.

Pure: the bounds are constants, times are arguments.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, TypeAdapter

from .messages import (
    Id,
    JobCancel,
    JobState,
    JobStatus,
    JobSubmit,
    LogChunk,
    Reject,
    ResultRef,
    Seq,
    Timestamp,
    UsageReceipt,
    _adapter,
    _Model,
)

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "SILENCE_BOUND_S",
    "TO_PROVIDER_JOB_V2",
    "TO_RENTER_JOB_V2",
    "JobAttach",
    "JobAttached",
    "JobHeartbeat",
]

#: the provider's longest quiet gap on a job stream (it sends a heartbeat when it reaches it)
HEARTBEAT_INTERVAL_S: Final = 2.0
#: the renter gives a provider up after this long without any frame: four heartbeat intervals,
#: so a provider (or renter) stalled for up to ~6 s by a loaded machine is not given up on,
#: and a hung one is noticed in under 10 s of wall time
SILENCE_BOUND_S: Final = 4 * HEARTBEAT_INTERVAL_S


class JobHeartbeat(_Model):
    """The provider is alive; what it has produced so far (the renter can tell what it missed)."""

    type: Literal["job_heartbeat"] = "job_heartbeat"
    job_id: Id
    at: Timestamp
    #: the job's state now (None before the first status)
    state: JobState | None = None
    #: the seq the next log chunk will have (chunks below it exist or were dropped)
    next_log_seq: Seq = 0
    #: whole minutes metered so far (usage receipts sent or to be sent)
    minutes: Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)] = 0


class JobAttach(_Model):
    """The agreement's renter re-attaches to its job: logs from ``log_offset`` on."""

    type: Literal["job_attach"] = "job_attach"
    job_id: Id
    log_offset: Seq = 0


class JobAttached(_Model):
    """The provider accepts a re-attach; the logs resume at ``log_offset`` (>= the one asked)."""

    type: Literal["job_attached"] = "job_attached"
    job_id: Id
    log_offset: Seq


TO_PROVIDER_JOB_V2: TypeAdapter[JobSubmit | JobCancel | JobAttach] = _adapter(JobSubmit, JobCancel, JobAttach)
TO_RENTER_JOB_V2: TypeAdapter[
    JobStatus | LogChunk | UsageReceipt | ResultRef | Reject | JobHeartbeat | JobAttached
] = _adapter(JobStatus, LogChunk, UsageReceipt, ResultRef, Reject, JobHeartbeat, JobAttached)
