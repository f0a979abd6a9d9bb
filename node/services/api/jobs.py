"""The local API's jobs: submitted, run by a backend, bounded, remembered.

Rules: no I/O here except through the job backend (``JobBackend``: the renter workflow over the
network, or a test double). Every table is bounded: at most ``max_active`` API jobs run at once
(each holds a libp2p stream, an escrow poller and a log buffer), at most ``max_records`` jobs
are remembered (the oldest finished ones are forgotten first), and each job keeps its last
``log_lines`` lines.

Theory of operation of a job: ``JobManager.submit`` records the job as ``pending`` and starts
``_supervise`` in the manager's nursery, which calls ``backend.run(spec, job)``. The backend
reports through the job record (``agreed``, ``log``, ``progress``) and returns a ``JobFinal``.
Cancelling never cancels the backend's task: it sets ``job.cancel_requested`` and the backend
stops the job through the protocol (JobCancel) and settles the escrow, so a cancelled job's
unaccrued minutes always come back. Only the node shutting down cancels backends outright.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from dgpu.node.services.api.errors import Busy, Conflict, JobRunError, NotFound, Unavailable
from dgpu.node.services.api.schema import ApiJobState, JobOut, JobSpec, LogLine, LogsOut, UsageOut
from dgpu.protocol.messages import UsageReceipt

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["ApiJob", "JobBackend", "JobFinal", "JobManager", "Reattacher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobFinal:
    """How a job ended, with the escrow's final accounting (base units; zeros without escrow)."""

    state: ApiJobState
    exit_code: int | None = None
    reason: str = ""
    minutes: int = 0
    paid: int = 0
    fee: int = 0
    refunded: int = 0
    #: the provider's signed per-minute usage receipts
    receipts: tuple[UsageReceipt, ...] = ()
    over_accrued: bool = False


@dataclass
class ApiJob:
    """One job submitted through the API. Mutated only by its backend and the manager."""

    id: str
    spec: JobSpec
    created_at: int
    log_capacity: int
    state: ApiJobState = ApiJobState.PENDING
    provider: str | None = None
    rate_per_minute: int | None = None
    escrow: str | None = None
    agreement_id: str | None = None
    exit_code: int | None = None
    reason: str = ""
    error_code: str | None = None
    #: minutes accrued so far (running) or billed (finished)
    minutes: int = 0
    #: base units spent so far: accrued minutes x rate while running, paid + fee at the end
    spent: int = 0
    paid: int = 0
    fee: int = 0
    refunded: int = 0
    finished_at: int | None = None
    #: set by a cancel request; the backend stops the job and settles (never a task cancel)
    cancel_requested: trio.Event = field(default_factory=trio.Event)
    #: the job's verified result archive (a tar) on this node, once fetched from the provider
    result_file: Path | None = None
    #: (seq, stream, line); seq counts every line ever logged, from 0, without gaps
    logs: deque[tuple[int, str, str]] = field(init=False)
    next_seq: int = 0
    receipts: tuple[UsageReceipt, ...] = ()
    over_accrued: bool = False
    #: the first seq no reader has been given yet (lines below it were read at least once)
    read_seq: int = 0
    #: lines pushed out of the ring buffer before anyone read them (a log flood)
    dropped_lines: int = 0

    def __post_init__(self) -> None:
        self.logs = deque(maxlen=self.log_capacity)

    # backend reports -------------------------------------------------------------------------

    def agreed(self, provider: str, rate_per_minute: int, *, escrow: str | None,
               agreement_id: str | None) -> None:
        self.provider, self.rate_per_minute = provider, rate_per_minute
        self.escrow, self.agreement_id = escrow, agreement_id
        self.state = ApiJobState.RUNNING

    def log(self, stream: str, text: str) -> None:
        for line in text.splitlines() or [""]:
            if len(self.logs) == self.log_capacity and self.logs[0][0] >= self.read_seq:
                self.dropped_lines += 1
            self.logs.append((self.next_seq, stream, line[:4096]))  # one line is bounded too
            self.next_seq += 1

    def progress(self, minutes: int, spent: int) -> None:
        self.minutes, self.spent = minutes, spent

    # views ----------------------------------------------------------------------------------

    def tail(self, since: int | None, limit: int) -> list[tuple[int, str, str]]:
        lines = [entry for entry in self.logs if since is None or entry[0] >= since]
        return lines[:limit] if since is not None else lines[-limit:]

    def view(self, tail: int = 20) -> JobOut:
        """The job's status as the API shows it, with its last ``tail`` log lines."""
        return JobOut(
            id=self.id, state=self.state, created_at=self.created_at, finished_at=self.finished_at,
            provider=self.provider, agreement_id=self.agreement_id, escrow=self.escrow,
            rate_per_minute=self.rate_per_minute, exit_code=self.exit_code, reason=self.reason,
            error_code=self.error_code, minutes=self.minutes, spent=self.spent, paid=self.paid, fee=self.fee,
            refunded=self.refunded, executor=str(self.spec.executor), max_minutes=self.spec.max_minutes,
            cancel_requested=self.cancel_requested.is_set(), next_log_seq=self.next_seq,
            last_logs=_lines(self.tail(None, tail)), metered_minutes=len(self.receipts),
            usage=[UsageOut.of(r) for r in self.receipts[-tail:]], over_accrued=self.over_accrued,
        )

    def log_page(self, since: int | None, limit: int) -> LogsOut:
        """The last ``limit`` lines, or up to ``limit`` lines from ``since`` on."""
        first = self.logs[0][0] if self.logs else self.next_seq
        lines = self.tail(since, limit)
        if lines and (since is None or since <= self.read_seq):  # a reader caught up to here
            self.read_seq = max(self.read_seq, lines[-1][0] + 1)
        return LogsOut(id=self.id, state=self.state, next_seq=self.next_seq, first_seq=first,
                       lines=_lines(lines))

    def final_reason(self, reason: str) -> str:
        """``reason``, saying so when the log flood dropped lines nobody had read."""
        if not self.dropped_lines:
            return reason
        note = (f"{self.dropped_lines} log lines were dropped unread (a log flood: this node keeps "
                f"the last {self.log_capacity} lines)")
        return f"{reason}; {note}" if reason else note


def _lines(entries: list[tuple[int, str, str]]) -> list[LogLine]:
    return [LogLine(seq=s, stream=st, line=ln) for s, st, ln in entries]


class JobBackend(Protocol):
    """Runs one API job to its end (negotiation, escrow, job stream, settlement).

    Reports through ``job.agreed/log/progress``; watches ``job.cancel_requested``. Raises
    :class:`JobRunError` when the job could not run (no offer, refused, escrow failed)."""

    async def run(self, spec: JobSpec, job: ApiJob) -> JobFinal: ...


class KeptLike(Protocol):
    @property
    def job_id(self) -> str: ...

    @property
    def spec(self) -> JobSpec: ...


class Reattacher(Protocol):
    """Re-attaches API jobs whose rentals the node kept when it went away (``NetworkJobBackend``)."""

    async def kept(self) -> Sequence[KeptLike]: ...

    async def find(self, key: str) -> KeptLike | None: ...

    async def reattach(self, kept: Any, job: ApiJob) -> JobFinal: ...


class JobManager:
    """The API's jobs: bounded, supervised, in the node's nursery (``await nursery.start(m.run)``).

    With a ``reattacher``, the jobs this node followed when it last went away are re-attached when
    it starts (as many as ``max_active`` allows), and :meth:`attach` re-attaches one on demand."""

    def __init__(self, backend: JobBackend | None, *, max_active: int, max_records: int, log_lines: int,
                 clock: Callable[[], int], reattacher: Reattacher | None = None) -> None:
        self.backend = backend
        self.reattacher = reattacher
        self.max_active = max_active
        self.max_records = max_records
        self.log_lines = log_lines
        self.clock = clock
        self._jobs: OrderedDict[str, ApiJob] = OrderedDict()  # oldest first
        self._active = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the jobs' nursery until cancelled (the node's shutdown cancels running jobs)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            if self.reattacher is not None:
                for kept in await self.reattacher.kept():
                    try:
                        self._start(kept.job_id, kept.spec, partial(self.reattacher.reattach, kept))
                    except Busy:
                        log.warning("API job %s left detached (too many jobs); `dgpu jobs attach` it", kept.job_id)
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    @property
    def active(self) -> int:
        return self._active

    def submit(self, spec: JobSpec) -> ApiJob:
        if self.backend is None:
            raise Unavailable("this node has no ledger configured (--ledger-url), so it cannot pay for "
                              "jobs; nothing was submitted", "no_ledger")
        return self._start(secrets.token_hex(12), spec, partial(self.backend.run, spec))

    async def attach(self, key: str) -> ApiJob:
        """Follow the job ``key`` (API job id or agreement id) again: the one already followed,
        or a kept rental re-attached (logs from where this node left off, result, settlement)."""
        job = self._jobs.get(key) or next((j for j in self._jobs.values() if j.agreement_id == key), None)
        if job is not None and not job.state.terminal:
            return job
        kept = await self.reattacher.find(key) if self.reattacher is not None else None
        if kept is None:
            if job is not None:
                raise Conflict(f"job {key[:32]} already ended ({job.state})", "job_ended")
            raise NotFound(f"no job or kept rental {key[:64]!r}")
        reattacher = self.reattacher
        assert reattacher is not None
        return self._start(kept.job_id, kept.spec, partial(reattacher.reattach, kept))

    def _start(self, job_id: str, spec: JobSpec, run: Callable[[ApiJob], Awaitable[JobFinal]]) -> ApiJob:
        if self._nursery is None:
            raise Unavailable("the job service is not running")
        if self._active >= self.max_active:
            raise Busy(f"{self._active} API jobs are running (the limit is {self.max_active}); "
                       "try again when one ends", "too_many_jobs")
        self._jobs.pop(job_id, None)  # a re-attach replaces the ended record of the same job
        self._forget_old()
        job = ApiJob(id=job_id, spec=spec, created_at=self.clock(), log_capacity=self.log_lines)
        self._jobs[job.id] = job
        self._active += 1
        self._nursery.start_soon(self._supervise, job, run)
        return job

    def _forget_old(self) -> None:
        while len(self._jobs) >= self.max_records:
            victim = next((j for j in self._jobs.values() if j.state.terminal), None)
            if victim is None:  # every record is live; max_active < max_records keeps this rare
                raise Busy("the job table is full of live jobs", "too_many_jobs")
            del self._jobs[victim.id]
            if victim.result_file is not None:  # results live as long as their record (bounded)
                victim.result_file.unlink(missing_ok=True)

    def get(self, job_id: str) -> ApiJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id[:32]!r}")
        return job

    def list_jobs(self, *, state: ApiJobState | None = None, limit: int = 50, offset: int = 0
                  ) -> tuple[int, list[ApiJob]]:
        jobs = [j for j in reversed(self._jobs.values()) if state is None or j.state is state]
        return len(jobs), jobs[offset:offset + limit]

    def cancel(self, job_id: str) -> ApiJob:
        job = self.get(job_id)
        if job.state.terminal:
            raise Conflict(f"job {job_id[:32]} already ended ({job.state})", "job_ended")
        job.cancel_requested.set()
        return job

    async def _supervise(self, job: ApiJob, run: Callable[[ApiJob], Awaitable[JobFinal]]) -> None:
        try:
            final = await run(job)
        except JobRunError as exc:
            final = JobFinal(ApiJobState.FAILED, reason=exc.message)
            job.error_code = exc.code
        except Exception as exc:  # supervisor: one job's bug must not take the node down
            log.exception("API job %s failed unexpectedly", job.id)
            final = JobFinal(ApiJobState.FAILED, reason=f"internal error ({type(exc).__name__})")
            job.error_code = "internal"
        finally:
            self._active -= 1
        job.state, job.exit_code, job.reason = final.state, final.exit_code, job.final_reason(final.reason)
        job.receipts, job.over_accrued = final.receipts, final.over_accrued
        if final.minutes or final.paid or final.fee or final.refunded or not job.minutes:
            job.minutes = final.minutes
            job.paid, job.fee, job.refunded = final.paid, final.fee, final.refunded
            job.spent = final.paid + final.fee
        job.finished_at = self.clock()
