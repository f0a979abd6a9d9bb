from __future__ import annotations

import pytest

from dgpu.protocol.errors import RemoteProtocolError
from dgpu.protocol.job_session import JobSession
from dgpu.protocol.messages import JobState, JobStatus, LogChunk, ResultRef, UsageReceipt

JOB = "ab" * 8
Stream = list[JobStatus | LogChunk | UsageReceipt | ResultRef]
AGREEMENT_ID = "0" * 64


def status(seq: int, state: JobState, exit_code: int | None = None) -> JobStatus:
    return JobStatus(job_id=JOB, seq=seq, state=state, at=1, exit_code=exit_code)


def log(seq: int) -> LogChunk:
    return LogChunk(job_id=JOB, seq=seq, stream="stdout", data=f"line {seq}\n")


def usage(minute: int) -> UsageReceipt:
    return UsageReceipt(job_id=JOB, agreement_id=AGREEMENT_ID, minute_index=minute, minutes_total=minute + 1, at=1)


def test_a_complete_ordered_stream() -> None:
    session = JobSession(JOB)
    for message in [status(0, JobState.ACCEPTED), status(1, JobState.STARTING), status(2, JobState.RUNNING),
                    log(0), log(1), usage(0), log(2), usage(1), status(3, JobState.FINISHED, 0),
                    ResultRef(job_id=JOB, cid="sha256-" + "1" * 64, size=3)]:
        session.receive(message)
    assert session.done and session.exit_code == 0 and session.minutes == 2 and session.result is not None


@pytest.mark.parametrize("bad", [
    [log(1)],                                               # gap in logs
    [log(0), log(0)],                                       # duplicate log
    [status(1, JobState.ACCEPTED)],                         # status seq gap
    [status(0, JobState.RUNNING)],                          # skipped states
    [status(0, JobState.ACCEPTED), status(1, JobState.ACCEPTED)],
    [usage(1)],                                             # usage out of order
    [status(0, JobState.FAILED), log(0)],                   # after the end
    [ResultRef(job_id=JOB, cid="sha256-" + "1" * 64, size=3)],  # result before finishing
    [LogChunk(job_id="cd" * 8, seq=0, stream="stdout", data="")],  # another job
])
def test_out_of_order_or_foreign_messages_are_refused(bad: Stream) -> None:
    session = JobSession(JOB)
    *prefix, last = bad
    for message in prefix:
        session.receive(message)
    before = (session.state, session.next_log_seq, session.next_status_seq, session.minutes)
    with pytest.raises(RemoteProtocolError):
        session.receive(last)
    assert (session.state, session.next_log_seq, session.next_status_seq, session.minutes) == before


def test_failure_can_come_from_any_live_state() -> None:
    session = JobSession(JOB)
    session.receive(status(0, JobState.ACCEPTED))
    session.receive(status(1, JobState.CANCELLED, None))
    assert session.done and session.state is JobState.CANCELLED
