"""The job store port: durable job lifecycles, metered minutes and escrow receipts.

``adapters.store.Store`` (SQLite) implements :class:`JobStore`. Its rules: every lifecycle move
goes through :meth:`JobStore.transition` (the protocol's job state table; an illegal move
raises ``IllegalTransition`` and changes nothing); a minute is recorded at most once per job
(:meth:`JobStore.record_minute` says whether it was new); a receipt at most once per tx.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dgpu.protocol.ledger import EscrowReceipt
from dgpu.protocol.messages import JobState

__all__ = ["JobRecord", "JobState", "JobStore", "ReceiptSink", "UsageMinute"]


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    rental_id: str
    executor: str
    state: JobState
    spec: dict[str, Any]
    container_id: str | None
    created_at: float
    started_at: float | None  #: wall clock when the process started; the meter's origin
    finished_at: float | None
    exit_code: int | None
    reason: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class UsageMinute:
    job_id: str
    minute_index: int
    wall_seconds: float  #: seconds of this minute the job ran (< interval for the last one)
    recorded_at: float
    backfilled: bool  #: recorded after a daemon restart, without GPU samples
    samples: list[dict[str, Any]]


class ReceiptSink(Protocol):
    """Where escrow receipts are kept per rental (earnings and spending)."""

    async def record_receipt(self, role: str, receipt: EscrowReceipt) -> bool:
        """Record one instruction's money movements; False if this tx was recorded before."""
        ...


class JobStore(ReceiptSink, Protocol):
    """Durable job, usage and receipt state (one owner: the job service and the meter write it)."""

    async def add_job(self, job_id: str, rental_id: str, executor: str, spec: dict[str, Any]) -> JobRecord:
        """Persist a new job in ACCEPTED; ``StoreError`` if the id exists."""
        ...

    async def get_job(self, job_id: str) -> JobRecord:
        """The job; ``UnknownJob`` if there is none."""
        ...

    async def jobs_in(self, states: Sequence[JobState]) -> list[JobRecord]: ...

    async def transition(self, job_id: str, to: JobState, *, detail: str = "",
                         container_id: str | None = None, started_at: float | None = None,
                         exit_code: int | None = None, reason: str | None = None) -> JobRecord:
        """Move a job to ``to`` if the state table allows it (atomically); the new record."""
        ...

    async def record_minute(self, job_id: str, minute_index: int, wall_seconds: float,
                            samples: Sequence[dict[str, Any]] = (), *, backfilled: bool = False) -> bool:
        """Record one metered minute; False (nothing written) if it was recorded before."""
        ...

    async def minutes(self, job_id: str, from_index: int = 0) -> list[UsageMinute]: ...

    async def last_minute_index(self, job_id: str) -> int | None: ...
