"""Service logic behind the node's local HTTP API (``adapters/http_api.py`` is its only caller).

Rules:

- No I/O here except through injected ports: the job backend (``JobBackend``: negotiation,
  escrow and the job stream, or a test double), the ledger (``EscrowLedger``) and the node's
  own offer publisher / negotiator, which this module wraps but never replaces.
- Every table is bounded: at most ``max_active`` API jobs run at once (each holds a libp2p
  stream, an escrow poller and a log buffer), at most ``max_records`` jobs are remembered
  (the oldest finished ones are forgotten first), and each job keeps its last ``log_lines``
  lines.
- Money is integers of the mint's base unit; ``Decimal`` appears only in display strings.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import trio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dgpu.node.services.offers import BookEntry, OfferBook, OfferQuery
from dgpu.protocol.errors import PricingError
from dgpu.protocol.messages import Executor, GpuSpec, Offer
from dgpu.protocol.pricing import (
    DEFAULT_FEE_BPS,
    PriceInputs,
    estimate,
    hourly_price,
    rate_per_minute,
)

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

    from dgpu.contracts.escrow_api import EscrowLedger
    from dgpu.node.services.offers import OfferPublisher

__all__ = [
    "ApiError",
    "ApiJob",
    "ApiJobState",
    "ApiSettings",
    "Busy",
    "Conflict",
    "EstimateIn",
    "Forbidden",
    "JobBackend",
    "JobFinal",
    "JobManager",
    "JobRunError",
    "JobSpec",
    "MarketQuery",
    "NotFound",
    "NotImplementedOnLedger",
    "ProviderControl",
    "ProviderProfile",
    "Unavailable",
    "format_amount",
    "market_page",
    "price_estimate",
]

log = logging.getLogger(__name__)

# -- errors ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """Anything the API refuses on purpose; the adapter maps the class to an HTTP status.

    ::

        ApiError
        ├── NotFound                 no such job / provider / key
        ├── Conflict                 the request contradicts the state (cancel a finished job)
        ├── Busy                     a bound is full (too many running API jobs)
        ├── Forbidden                allowed to nobody on this node (another wallet's account)
        ├── Unavailable              a dependency (bootstrap node, ledger) failed or is absent
        ├── NotImplementedOnLedger   the ledger has no instruction for this (withdraw on dev)
        └── JobRunError              a job could not run (reported on the job, not raised to HTTP)
    """

    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(ApiError):
    code = "not_found"


class Conflict(ApiError):
    code = "conflict"


class Busy(ApiError):
    code = "busy"


class Forbidden(ApiError):
    code = "forbidden"


class Unavailable(ApiError):
    code = "unavailable"


class NotImplementedOnLedger(ApiError):
    code = "not_implemented"


class JobRunError(ApiError):
    code = "job_failed"


# -- settings --------------------------------------------------------------------------------------


class ApiSettings(BaseModel):
    """How the local API runs; built once by the node's CLI, then read-only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    #: HTTP base URL of the bootstrap node whose auth (JWKS, login) and storage the API uses
    bootstrap_url: str = Field(min_length=1, max_length=512)
    #: the development ledger's HTTP base URL (a bootstrap node); None: no ledger, so no job
    #: can be paid for and ``POST /api/v1/jobs`` is refused (503 ``no_ledger``)
    ledger_url: str | None = Field(None, max_length=512)
    #: development networks only: simulated GPUs may be registered and the faucet may be used
    development: bool = False
    #: wallets besides the owner allowed to use the API (tokens with role "admin" always are)
    admin_wallets: frozenset[str] = frozenset()
    #: each running API job holds a stream, an escrow poller and a log buffer
    max_active_jobs: int = Field(4, ge=1, le=64)
    #: finished jobs are forgotten oldest first beyond this (memory bound)
    max_job_records: int = Field(1000, ge=1, le=100_000)
    #: log lines kept per job (a ring buffer; older lines are dropped, ``seq`` keeps counting)
    log_lines: int = Field(2000, ge=10, le=100_000)
    #: JSON bodies above this are refused with 413 before they are parsed (storage streams)
    max_body_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: most bytes one storage upload may stream through the node (the bootstrap has its own cap)
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    #: clock skew tolerated when checking token times (seconds)
    token_leeway_s: int = Field(30, ge=0, le=300)
    #: seconds between escrow reads while a job runs (minutes and spend in the status)
    progress_interval_s: float = Field(5.0, gt=0, le=300)


# -- display -------------------------------------------------------------------------------------


def format_amount(base_units: int, decimals: int) -> str:
    """Base units as a token amount string (``8334`` with 6 decimals -> ``"0.008334"``)."""
    value = Decimal(base_units).scaleb(-decimals)
    return f"{value:.{decimals}f}" if decimals > 0 else str(base_units)


# -- marketplace ---------------------------------------------------------------------------------

#: a page of the marketplace is at most this many offers (bounds the response size)
MAX_PAGE = 200


@dataclass(frozen=True, slots=True)
class MarketQuery:
    gpu_model: str | None = None
    min_vram_mib: int = 0
    gpu_count: int = 1
    region: str | None = None
    max_price: int | None = None
    executor: Executor | None = None
    include_simulated: bool = False
    sort: Literal["price", "-price", "vram", "-vram"] = "price"
    limit: int = 50
    offset: int = 0

    def offer_query(self) -> OfferQuery:
        return OfferQuery(gpu_model=self.gpu_model, min_vram_mib=self.min_vram_mib,
                          gpu_count=self.gpu_count, region=self.region,
                          max_price_per_minute=self.max_price, executor=self.executor,
                          include_simulated=self.include_simulated)


def _max_vram(offer: Offer) -> int:
    gpus = offer.gpus
    return gpus[0].vram_mib if len(gpus) == 1 else max(g.vram_mib for g in gpus)


def market_page(book: OfferBook, q: MarketQuery, *, now: int) -> tuple[int, list[BookEntry]]:
    """(total matches, the requested page) — sorted by price (cheapest first) or VRAM."""
    hits = book.query(q.offer_query(), now=now, order=q.sort)
    return len(hits), hits[q.offset:q.offset + min(q.limit, MAX_PAGE)]


# -- pricing -------------------------------------------------------------------------------------


class EstimateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_model: str = Field(min_length=1, max_length=64)
    vram_mib: int = Field(ge=0, le=2**24)
    power_limit_w: int = Field(0, ge=0, le=100_000)
    minutes: int = Field(ge=1, le=30 * 24 * 60)
    gpu_count: int = Field(1, ge=1, le=64)
    #: demand/supply multiplier as a decimal string; the engine clamps it to [0.5, 2.0]
    multiplier: str = Field("1", pattern=r"^\d{1,3}(\.\d{1,6})?$")


def price_estimate(body: EstimateIn, *, decimals: int, fee_bps: int = DEFAULT_FEE_BPS) -> dict[str, Any]:
    """The pricing engine's answer: hourly price per GPU (Decimal string) and integer amounts."""
    try:
        hourly = hourly_price(PriceInputs(body.gpu_model, body.vram_mib, body.power_limit_w),
                              Decimal(body.multiplier))
        per_gpu = rate_per_minute(hourly, decimals)
        est = estimate(per_gpu * body.gpu_count, body.minutes, fee_bps)
    except PricingError as exc:
        raise ApiError(str(exc), "invalid_request") from exc
    return {
        "gpu_model": body.gpu_model, "gpu_count": body.gpu_count, "minutes": body.minutes,
        "hourly_price_per_gpu": str(hourly), "decimals": decimals,
        "rate_per_gpu_minute": per_gpu, "rate_per_minute": est.rate_per_minute,
        "total": est.total, "fee": est.fee, "provider_net": est.provider_net, "fee_bps": fee_bps,
    }


# -- jobs ----------------------------------------------------------------------------------------


class JobSpec(BaseModel):
    """What a renter submits through ``POST /api/v1/jobs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    script: str | None = Field(None, min_length=1, max_length=64 * 1024)
    image: str | None = Field(None, min_length=1, max_length=256)
    command: tuple[str, ...] = Field((), max_length=64)
    env: dict[str, str] = Field(default_factory=dict, max_length=64)
    max_minutes: int = Field(10, ge=1, le=24 * 60)
    #: the most this job may cost per minute (all its GPUs), in base units
    max_price_per_minute: int | None = Field(None, gt=0)
    gpu_model: str | None = Field(None, min_length=1, max_length=64)
    min_vram_mib: int = Field(0, ge=0, le=2**24)
    gpu_count: int = Field(1, ge=1, le=64)
    region: str | None = Field(None, min_length=1, max_length=64)
    #: rent from this provider (wallet); otherwise the cheapest matching offer
    provider: str | None = Field(None, min_length=32, max_length=44)
    egress: bool = False
    #: job path (under the job's inputs folder) -> a file on the node's host. The API listens on
    #: localhost for the node's owner only, so the node reads the owner's local files; each is
    #: offered to the chosen provider alone, by content id, and fetched over /dgpu/blob/1.0.0
    inputs: dict[str, str] = Field(default_factory=dict, max_length=64)

    @model_validator(mode="after")
    def _one_payload(self) -> JobSpec:
        if (self.script is None) == (self.image is None):
            raise ValueError("give exactly one of script or image")
        if self.script is not None and self.command:
            raise ValueError("command goes with an image, not a script")
        return self

    @property
    def executor(self) -> Executor:
        return Executor.SCRIPT if self.script is not None else Executor.DOCKER


class ApiJobState(StrEnum):
    """An API job's lifecycle (the terminal ones are the protocol's JobState values)."""

    PENDING = "pending"
    """Recorded; finding an offer, negotiating, locking the escrow."""
    RUNNING = "running"
    """Agreed with a provider; submitted and streaming logs."""
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (ApiJobState.PENDING, ApiJobState.RUNNING)


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
            self.logs.append((self.next_seq, stream, line[:4096]))  # one line is bounded too
            self.next_seq += 1

    def progress(self, minutes: int, spent: int) -> None:
        self.minutes, self.spent = minutes, spent

    # views ----------------------------------------------------------------------------------

    def tail(self, since: int | None, limit: int) -> list[tuple[int, str, str]]:
        lines = [entry for entry in self.logs if since is None or entry[0] >= since]
        return lines[:limit] if since is not None else lines[-limit:]


class JobBackend(Protocol):
    """Runs one API job to its end (negotiation, escrow, job stream, settlement).

    Reports through ``job.agreed/log/progress``; watches ``job.cancel_requested``. Raises
    :class:`JobRunError` when the job could not run (no offer, refused, escrow failed)."""

    async def run(self, spec: JobSpec, job: ApiJob) -> JobFinal: ...


class JobManager:
    """The API's jobs: bounded, supervised, in the node's nursery (``await nursery.start(m.run)``)."""

    def __init__(self, backend: JobBackend | None, *, max_active: int, max_records: int, log_lines: int,
                 clock: Callable[[], int]) -> None:
        self.backend = backend
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
        if self._nursery is None:
            raise Unavailable("the job service is not running")
        if self._active >= self.max_active:
            raise Busy(f"{self._active} API jobs are running (the limit is {self.max_active}); "
                       "try again when one ends", "too_many_jobs")
        self._forget_old()
        job = ApiJob(id=secrets.token_hex(12), spec=spec, created_at=self.clock(),
                     log_capacity=self.log_lines)
        self._jobs[job.id] = job
        self._active += 1
        self._nursery.start_soon(self._supervise, job)
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

    async def _supervise(self, job: ApiJob) -> None:
        assert self.backend is not None  # submit refuses every job without one
        try:
            final = await self.backend.run(job.spec, job)
        except JobRunError as exc:
            final = JobFinal(ApiJobState.FAILED, reason=exc.message)
            job.error_code = exc.code
        except Exception as exc:  # supervisor: one job's bug must not take the node down
            log.exception("API job %s failed unexpectedly", job.id)
            final = JobFinal(ApiJobState.FAILED, reason=f"internal error ({type(exc).__name__})")
            job.error_code = "internal"
        finally:
            self._active -= 1
        job.state, job.exit_code, job.reason = final.state, final.exit_code, final.reason
        if final.minutes or final.paid or final.fee or final.refunded or not job.minutes:
            job.minutes = final.minutes
            job.paid, job.fee, job.refunded = final.paid, final.fee, final.refunded
            job.spent = final.paid + final.fee
        job.finished_at = self.clock()


# -- provider profile ----------------------------------------------------------------------------


class GpuIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=64)
    vram_mib: int = Field(gt=0, le=2**24)
    count: int = Field(1, ge=1, le=64)
    simulated: bool = False


class ProviderProfile(BaseModel):
    """``POST /api/v1/providers``: what this node offers. Omitted fields keep their value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    price_per_gpu_minute: int | None = Field(None, gt=0, le=10**15)
    region: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w.:-]+$")
    gpus: tuple[GpuIn, ...] | None = Field(None, min_length=1, max_length=16)
    executors: tuple[Executor, ...] | None = Field(None, min_length=1, max_length=2)


class ProviderControl:
    """The provider API's view of this node's offer, through the ``OfferPublisher``'s own methods:
    the publisher owns the offer's terms and the pause, the inventory the GPUs and their price.

    Pausing stops publishing (peers drop the last offer when it expires, at most ``offer_ttl_s``
    later) and makes the negotiator answer ``no_capacity`` to new requests; running jobs are not
    touched.
    """

    def __init__(self, publisher: OfferPublisher, *, development: bool) -> None:
        self.publisher = publisher
        self.development = development

    @property
    def paused(self) -> bool:
        return self.publisher.paused

    def current(self) -> Offer:
        return self.publisher.current or self.publisher.profile()

    def update(self, profile: ProviderProfile) -> Offer:
        """Apply ``profile``, validate the resulting offer, republish soon; raises ApiError."""
        gpus = None
        if profile.gpus is not None:
            if any(g.simulated for g in profile.gpus) and not self.development:
                raise Forbidden("simulated GPUs are allowed on development networks only",
                                "simulated_not_allowed")
            if not all(g.simulated for g in profile.gpus):
                raise Forbidden("GPUs come from the node's inventory (NVML); only simulated GPUs "
                                "may be declared through the API", "real_gpus_from_inventory")
            gpus = tuple(GpuSpec(**g.model_dump()) for g in profile.gpus)
        if profile.executors is not None and len(set(profile.executors)) != len(profile.executors):
            raise ApiError("duplicate executor", "invalid_request")
        try:
            return self.publisher.update_profile(price_per_gpu_minute=profile.price_per_gpu_minute,
                                                 region=profile.region, gpus=gpus, executors=profile.executors)
        except ValueError as exc:
            raise ApiError(f"that profile makes an invalid offer: {exc}", "invalid_request") from None

    def set_paused(self, paused: bool) -> None:
        if paused:
            self.publisher.pause()
        else:
            self.publisher.resume()


def provider_rows(entries: Iterable[BookEntry]) -> list[dict[str, Any]]:
    return [offer_row(e.offer, e.peer_id) for e in entries]


def offer_row(offer: Offer, peer_id: str | None) -> dict[str, Any]:
    return {
        "provider": offer.provider, "peer_id": peer_id, "region": offer.region,
        "ledger": offer.ledger, "mint": offer.mint,
        "gpus": [g.model_dump(mode="json") for g in offer.gpus],
        "gpu_count": offer.gpu_count, "max_vram_mib": _max_vram(offer),
        "price_per_gpu_minute": offer.price_per_minute,
        "executors": [str(e) for e in offer.executors], "simulated": offer.simulated,
        "min_minutes": offer.min_minutes, "max_minutes": offer.max_minutes,
        "seq": offer.seq, "expires_at": offer.expires_at,
    }


# -- the real job backend ------------------------------------------------------------------------

#: how long a submitted job waits for a matching offer before failing with no_offers (a fresh
#: node learns offers by gossip, which takes seconds on a loaded machine)
OFFER_WAIT_S = 10.0


class NetworkJobBackend:
    """Runs API jobs on the network from this node: the renter library's ``Client`` over the
    node's own runtime. Every job is paid for: ``negotiate`` with a ``LedgerFunder`` (the
    escrow is opened on ``ledger`` before the quote is accepted), then the job stream with
    billing, then settlement. There is no unpaid path: a node without a ledger has no backend
    (``JobManager`` refuses submissions with ``no_ledger``)."""

    def __init__(self, runtime: Any, ledger: EscrowLedger, *,
                 progress_interval_s: float, clock: Callable[[], int]) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.progress_interval_s = progress_interval_s
        self.clock = clock

    async def _pick(self, spec: JobSpec) -> BookEntry:
        book: OfferBook = self.runtime.book
        if spec.provider is not None:
            entry = book.get(spec.provider)
            if entry is None or entry.offer.expires_at <= self.clock():
                raise JobRunError(f"no live offer from provider {spec.provider}", "no_offers")
            return entry
        query = OfferQuery(gpu_model=spec.gpu_model, min_vram_mib=spec.min_vram_mib,
                           gpu_count=spec.gpu_count, region=spec.region,
                           max_price_per_minute=None if spec.max_price_per_minute is None
                           else spec.max_price_per_minute // spec.gpu_count,
                           executor=spec.executor,
                           include_simulated=bool(self.runtime.config.accept_simulated))
        with trio.move_on_after(OFFER_WAIT_S):
            await book.wait_for(query, now=self.clock)
        hits = book.query(query, now=self.clock())
        if not hits:
            raise JobRunError("no offer matches this job", "no_offers")
        return hits[0]

    async def run(self, spec: JobSpec, job: ApiJob) -> JobFinal:
        entry = await self._pick(spec)
        return await self._run_paid(spec, job, entry)

    async def _run_paid(self, spec: JobSpec, job: ApiJob, entry: BookEntry) -> JobFinal:
        from dgpu.client.client import Client, OfferInfo
        from dgpu.client.errors import ClientError, EscrowFailed, NegotiationFailed

        client = Client(self.runtime, self.ledger)
        try:
            rental = await client.rent(
                OfferInfo(entry.offer, entry.peer_id), image=spec.image, script=spec.script,
                command=spec.command, env=dict(spec.env), max_minutes=spec.max_minutes,
                gpu_count=spec.gpu_count, egress=spec.egress,
                max_price_per_minute=spec.max_price_per_minute, min_vram_mib=spec.min_vram_mib,
                inputs=dict(spec.inputs))
        except NegotiationFailed as exc:
            raise JobRunError(str(exc), "negotiation_failed") from exc
        except EscrowFailed as exc:
            raise JobRunError(str(exc), "escrow_failed") from exc
        job.agreed(entry.offer.provider, rental.rate_per_minute,
                   escrow=rental.escrow.address if rental.escrow else None, agreement_id=rental.id)
        if job.cancel_requested.is_set():  # cancelled while negotiating: nothing ran, all back
            try:
                view = await rental.close()
            except ClientError as exc:
                raise JobRunError(f"cancelled, but closing the escrow failed: {exc}", "escrow_failed") from exc
            return JobFinal(ApiJobState.CANCELLED, reason="cancelled before start",
                            minutes=view.claimed_minutes, paid=view.paid, fee=view.fee_paid,
                            refunded=view.refunded)

        async def follow_cancel() -> None:
            await job.cancel_requested.wait()
            rental.cancel()

        async def poll_progress() -> None:
            while True:
                await trio.sleep(self.progress_interval_s)
                try:
                    view = await rental.escrow_state()
                except ClientError:
                    continue
                except Exception as exc:  # supervisor loop: a ledger hiccup must not end the job
                    log.info("escrow poll for job %s failed: %s", job.id, type(exc).__name__)
                    continue
                job.progress(view.accrued_minutes, view.accrued_minutes * view.rate_per_minute)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_cancel)
            nursery.start_soon(poll_progress)
            try:
                result = await rental.run(on_log=lambda c: job.log(c.stream, c.data))
            except ClientError as exc:
                raise JobRunError(str(exc), "job_lost") from exc
            finally:
                nursery.cancel_scope.cancel()
        if result.result is not None:
            archive = Path(self.runtime.config.data_dir) / "api-results" / f"{job.id}.tar"
            try:
                await rental.fetch_result_archive(archive)
            except ClientError as exc:  # the job still finished; only its outputs are missing
                log.warning("job %s: result not fetched: %s", job.id, exc)
            else:
                job.result_file = archive
        return JobFinal(_final_state(str(result.state)), result.exit_code, result.reason,
                        result.minutes, result.paid, result.fee, result.refunded)


def _final_state(value: str) -> ApiJobState:
    try:
        state = ApiJobState(value)
    except ValueError:
        return ApiJobState.FAILED
    return state if state.terminal else ApiJobState.FAILED


# -- wallet --------------------------------------------------------------------------------------


class WalletService:
    """The node's wallet on its ledger (``EscrowLedger``; development ledger or Solana)."""

    def __init__(self, ledger: Any | None, wallet: str) -> None:
        self.ledger = ledger
        self.wallet = wallet

    def _ledger(self) -> Any:
        if self.ledger is None:
            raise Unavailable("this node has no ledger configured", "no_ledger")
        return self.ledger

    @property
    def development(self) -> bool:
        return self.ledger is not None and self.ledger.ledger == "development"

    async def info(self) -> dict[str, Any]:
        ledger = self._ledger()
        mint = await _ledger_call(ledger.mint_info())
        balance = await _ledger_call(ledger.balance(self.wallet))
        return {"address": self.wallet, "ledger": ledger.ledger, "mint": mint.address,
                "decimals": mint.decimals, "balance": balance,
                "balance_display": format_amount(balance, mint.decimals),
                "real_value": not self.development}

    async def balance(self, wallet: str) -> dict[str, Any]:
        ledger = self._ledger()
        mint = await _ledger_call(ledger.mint_info())
        balance = await _ledger_call(ledger.balance(wallet))
        return {"address": wallet, "balance": balance, "decimals": mint.decimals,
                "balance_display": format_amount(balance, mint.decimals), "real_value": not self.development}

    def _own(self, wallet: str) -> None:
        if wallet != self.wallet:
            raise Forbidden("this node can only act for its own wallet", "not_own_wallet")

    async def deposit(self, wallet: str, amount: int) -> dict[str, Any]:
        self._own(wallet)
        ledger = self._ledger()
        if self.development:
            minted = await _ledger_call(ledger.faucet(amount))
            balance = await _ledger_call(ledger.balance(self.wallet))
            return {"address": self.wallet, "credited": minted, "balance": balance,
                    "real_value": False, "note": "development ledger faucet: these tokens are worth nothing"}
        # on a real ledger a deposit is a transfer the owner makes to this address; the node
        # never credits an amount a client claims to have sent
        return {"address": self.wallet, "credited": 0, "real_value": True,
                "deposit_address": self.wallet,
                "note": "send tokens of the mint to this wallet; the balance shows them once confirmed"}

    async def withdraw(self, wallet: str, to: str, amount: int) -> dict[str, Any]:
        """Send ``amount`` base units from this node's wallet to ``to`` (a signed ledger transfer)."""
        self._own(wallet)
        ledger = self._ledger()
        transfer = getattr(ledger, "transfer", None)
        if transfer is None:  # the Solana client sends escrow instructions only; use a wallet app
            raise NotImplementedOnLedger(
                f"the {ledger.ledger} ledger client has no transfer instruction, so this node cannot "
                "withdraw; send the tokens with any Solana wallet holding this key", "withdraw_unsupported")
        tx = await _ledger_call(transfer(to, amount))
        balance = await _ledger_call(ledger.balance(self.wallet))
        return {"address": self.wallet, "to": to, "amount": amount, "tx": tx, "balance": balance,
                "real_value": not self.development}


async def _ledger_call(awaitable: Any) -> Any:
    """Await a ledger call, converting the contracts' errors once into ``Unavailable``."""
    from dgpu.contracts.errors import ContractsError, LedgerError, RequestRejected

    try:
        return await awaitable
    except (LedgerError, RequestRejected) as exc:
        raise Conflict(f"the ledger refused: {exc}"[:300], "ledger_refused") from exc
    except ContractsError as exc:
        raise Unavailable(f"ledger error: {exc}"[:300], "ledger_error") from exc
