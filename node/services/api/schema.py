"""The local API's wire schema: what clients send and what the services return.

The services build these models and the HTTP adapter returns them as they are; the ``dgpu``
CLI parses the API's answers with the same models. Pure data: pydantic and ``dgpu.protocol``
only. Amounts are integers of the mint's base unit; ``Decimal`` appears only in display strings.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from dgpu.protocol.messages import Executor, GpuSample, Offer, PriceBasis, UploadLink, UsageReceipt

__all__ = [
    "IMAGE_REFERENCE",
    "ApiJobState",
    "BalanceOut",
    "DepositIn",
    "DepositOut",
    "ErrorBody",
    "ErrorOut",
    "EstimateIn",
    "EstimateOut",
    "ForwardOut",
    "GpuIn",
    "GpuOut",
    "JobOut",
    "JobSpec",
    "JobsOut",
    "LogLine",
    "LogsOut",
    "MarketOut",
    "ObjectOut",
    "OfferOut",
    "ProviderProfile",
    "ProvidersOut",
    "StatusIn",
    "StatusOut",
    "WalletOut",
    "WithdrawIn",
    "WithdrawOut",
    "format_amount",
]


def format_amount(base_units: int, decimals: int) -> str:
    """Base units as a token amount string (``8334`` with 6 decimals -> ``"0.008334"``)."""
    value = Decimal(base_units).scaleb(-decimals)
    return f"{value:.{decimals}f}" if decimals > 0 else str(base_units)


# -- requests --------------------------------------------------------------------------------------


#: a Docker image reference: [registry[:port]/]name[/name...][:tag][@sha256:digest], names lowercase
IMAGE_REFERENCE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")


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
    #: stop the job when this node's stream to the provider breaks; by default it runs on and the
    #: node re-attaches when it comes back (``POST /api/v1/jobs/{id}/attach``)
    stop_on_disconnect: bool = False
    #: a signed upload link of the renter's bootstrap storage (``POST /api/v1/storage-links/...``):
    #: the provider pushes the packed result there too
    result_upload: UploadLink | None = None
    #: job TCP ports to reach on this node's 127.0.0.1 while the job runs: "PORT" or "LOCAL:PORT"
    #: (only providers that allow forwarding are chosen)
    forward: tuple[Annotated[str, StringConstraints(pattern=r"^(\d{1,5}:)?\d{1,5}$")], ...] = Field(
        (), max_length=8)
    #: run until cancelled or the paid minutes end, not until the command exits (Jupyter, servers)
    interactive: bool = False

    @model_validator(mode="after")
    def _one_payload(self) -> JobSpec:
        if (self.script is None) == (self.image is None):
            raise ValueError("give exactly one of script or image")
        if self.script is not None and self.command:
            raise ValueError("command goes with an image, not a script")
        if self.image is not None and not IMAGE_REFERENCE.fullmatch(self.image):
            raise ValueError(f"{self.image!r} is not a Docker image name (like busybox or pytorch/pytorch:2.4)")
        return self

    @property
    def executor(self) -> Executor:
        return Executor.SCRIPT if self.script is not None else Executor.DOCKER


class EstimateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_model: str = Field(min_length=1, max_length=64)
    vram_mib: int = Field(ge=0, le=2**24)
    power_limit_w: int = Field(0, ge=0, le=100_000)
    minutes: int = Field(ge=1, le=30 * 24 * 60)
    gpu_count: int = Field(1, ge=1, le=64)
    #: demand/supply multiplier as a decimal string; the engine clamps it to [0.5, 2.0]
    multiplier: str = Field("1", pattern=r"^\d{1,3}(\.\d{1,6})?$")


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


class DepositIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: development ledger: how much the faucet mints (base units); ignored on a real ledger
    amount: int = Field(0, ge=0, le=10**15)


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str = Field(min_length=32, max_length=44)
    amount: int = Field(gt=0, le=10**15)


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["active", "paused"]


# -- answers ---------------------------------------------------------------------------------------


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


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Out):
    code: str
    message: str


class ErrorOut(_Out):
    error: ErrorBody


class GpuOut(_Out):
    model: str
    vram_mib: int
    count: int
    compute_capability: str | None = None
    simulated: bool


class OfferOut(_Out):
    provider: str
    peer_id: str | None
    region: str
    ledger: str
    mint: str
    gpus: list[GpuOut]
    gpu_count: int
    max_vram_mib: int
    price_per_gpu_minute: int
    executors: list[str]
    simulated: bool
    min_minutes: int
    max_minutes: int
    seq: int
    expires_at: int
    own: bool = False
    paused: bool = False
    #: which inputs produced the price (engine inputs and market multiplier, or an override)
    pricing: PriceBasis | None = None
    #: GPUs no rental holds now (None: an older provider that does not say)
    free_gpus: int | None = None

    @classmethod
    def of(cls, offer: Offer, peer_id: str | None, *, own: bool = False, paused: bool = False) -> OfferOut:
        """The one row an offer is shown as (marketplace, providers, the CLI's table)."""
        gpus = offer.gpus
        return cls(
            provider=offer.provider, peer_id=peer_id, region=offer.region, ledger=offer.ledger, mint=offer.mint,
            gpus=[GpuOut.model_validate(g.model_dump()) for g in gpus], gpu_count=offer.gpu_count,
            max_vram_mib=gpus[0].vram_mib if len(gpus) == 1 else max(g.vram_mib for g in gpus),
            price_per_gpu_minute=offer.price_per_minute, executors=[str(e) for e in offer.executors],
            simulated=offer.simulated, min_minutes=offer.min_minutes, max_minutes=offer.max_minutes,
            seq=offer.seq, expires_at=offer.expires_at, own=own, paused=paused, pricing=offer.pricing,
            free_gpus=offer.free_gpus)


class MarketOut(_Out):
    total: int
    offset: int
    limit: int
    offers: list[OfferOut]
    #: offers of simulated GPUs this query would also match, left out (``include_simulated``)
    hidden_simulated: int = 0


class ProvidersOut(_Out):
    providers: list[OfferOut]


class LogLine(_Out):
    seq: int
    stream: str
    line: str


class UsageOut(_Out):
    """One metered minute of a job, from the provider's signed usage receipt."""

    minute_index: int
    at: int
    #: the leased GPUs' averaged samples (utilisation %, memory MiB, power mW, temperature °C)
    gpus: list[GpuSample]

    @classmethod
    def of(cls, receipt: UsageReceipt) -> UsageOut:
        return cls(minute_index=receipt.minute_index, at=receipt.at, gpus=list(receipt.gpus))


class ForwardOut(_Out):
    """A forwarded port of a running job: listening on this node's 127.0.0.1, or why not."""

    job_port: int
    local_port: int
    error: str | None = None


class JobOut(_Out):
    id: str
    state: ApiJobState
    created_at: int
    finished_at: int | None
    provider: str | None
    agreement_id: str | None
    escrow: str | None
    rate_per_minute: int | None
    exit_code: int | None
    reason: str
    error_code: str | None
    minutes: int
    spent: int
    paid: int
    fee: int
    refunded: int
    executor: str
    max_minutes: int
    cancel_requested: bool
    next_log_seq: int
    last_logs: list[LogLine]
    #: the metered minutes (receipts) received; the last ``usage`` of them in full
    metered_minutes: int = 0
    usage: list[UsageOut] = []
    #: the settled escrow paid more minutes than were metered (dgpu.protocol.reconcile)
    over_accrued: bool = False
    interactive: bool = False
    #: the job's forwarded ports, once it runs (``/api/v1/jobs/{id}/shell`` is its terminal)
    forwards: list[ForwardOut] = []


class JobsOut(_Out):
    total: int
    jobs: list[JobOut]


class LogsOut(_Out):
    id: str
    state: ApiJobState
    next_seq: int
    #: the oldest seq still held (older lines were dropped from the bounded buffer)
    first_seq: int
    lines: list[LogLine]


class WalletOut(_Out):
    address: str
    ledger: str
    mint: str
    decimals: int
    balance: int
    balance_display: str
    real_value: bool


class BalanceOut(_Out):
    address: str
    balance: int
    decimals: int
    balance_display: str
    real_value: bool


class DepositOut(_Out):
    address: str
    credited: int
    real_value: bool
    balance: int | None = None
    deposit_address: str | None = None
    note: str


class WithdrawOut(_Out):
    address: str
    to: str
    amount: int
    tx: str
    balance: int
    real_value: bool


class EstimateOut(_Out):
    gpu_model: str
    gpu_count: int
    minutes: int
    hourly_price_per_gpu: str
    decimals: int
    rate_per_gpu_minute: int
    rate_per_minute: int
    total: int
    fee: int
    provider_net: int
    fee_bps: int


class StatusOut(_Out):
    provider: str
    status: Literal["active", "paused"]


class ObjectOut(_Out):
    bucket: str
    key: str
    cid: str
    size: int
    updated_at: float
