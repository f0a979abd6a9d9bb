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

__all__ = ["JobRecord", "JobState", "JobStore", "ReceiptSink", "RentalBook", "RentalRecord", "UsageMinute"]


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


@dataclass(frozen=True, slots=True)
class RentalRecord:
    """A renter's rental as its node keeps it, so a restarted node re-attaches to the job."""

    agreement_id: str
    provider_peer: str
    provider_addrs: tuple[str, ...]  #: where the provider listened (its offer's addresses)
    agreement: dict[str, Any]  #: the Agreement (JSON); the escrow handle derives from its terms
    stop_on_disconnect: bool
    #: the first log chunk not yet received (the re-attach asks from here)
    log_offset: int
    #: the job's last state heard; None before the first
    state: str | None
    result: dict[str, Any] | None  #: the ResultRef (JSON), once received
    #: the rental is over on this side (final status handled, escrow settled): never re-attached
    ended: bool
    api_job_id: str | None  #: the local API's job for it, if the API started it
    api_spec: dict[str, Any] | None  #: that job's spec, without its environment (secrets)
    created_at: float
    updated_at: float


class RentalBook(Protocol):
    """The renter's rentals (one owner: the renter workflow writes them)."""

    async def add_rental_record(self, agreement_id: str, provider_peer: str, agreement: dict[str, Any], *,
                                provider_addrs: Sequence[str], stop_on_disconnect: bool) -> None: ...

    async def link_api_job(self, agreement_id: str, api_job_id: str, api_spec: dict[str, Any]) -> None: ...

    async def rental_progress(self, agreement_id: str, *, log_offset: int, state: str | None,
                              result: dict[str, Any] | None = None) -> None: ...

    async def end_rental_record(self, agreement_id: str, state: str | None) -> None: ...

    async def rental_record(self, key: str) -> RentalRecord | None:
        """The rental by agreement id or by its API job id."""
        ...

    async def open_rental_records(self) -> list[RentalRecord]:
        """Rentals not yet ended, oldest first."""
        ...
