"""Wire messages: frozen pydantic models, ``extra="forbid"``, a ``type`` discriminator each.

Money is an integer of the token's base unit (``int``, never ``float``); times are unix seconds
passed in by the caller. Strings and collections all have explicit bounds, so a message that
passes validation also fits its frame. One ``TypeAdapter`` per direction of each stream:

- gossip: :data:`GOSSIP_ADAPTER` (``Offer``); the offers topic also carries withdrawals:
  :data:`OFFERS_TOPIC_ADAPTER` (``Offer``, ``OfferWithdrawal``)
- negotiation: :data:`TO_PROVIDER_NEGOTIATION` (``JobRequest``, ``Accept``) and
  :data:`TO_RENTER_NEGOTIATION` (``Quote``, ``Reject``, ``Agreement``)
- job session: :data:`TO_PROVIDER_JOB` (``JobSubmit``, ``JobCancel``) and :data:`TO_RENTER_JOB`
  (``JobStatus``, ``LogChunk``, ``UsageReceipt``, ``ResultRef``, ``Reject``)
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    model_serializer,
    model_validator,
)

from .canonical import canonical_bytes_of_checked
from .ids import MAX_LOG_CHUNK_CHARS
from .keys import PublicKey

__all__ = [
    "GOSSIP_ADAPTER",
    "MAX_FORWARD_PORTS",
    "MESSAGE_TYPES",
    "OFFERS_TOPIC_ADAPTER",
    "TO_PROVIDER_JOB",
    "TO_PROVIDER_NEGOTIATION",
    "TO_RENTER_JOB",
    "TO_RENTER_NEGOTIATION",
    "Accept",
    "Agreement",
    "AgreementTerms",
    "EscrowRef",
    "Executor",
    "GpuSample",
    "GpuSpec",
    "ImagePattern",
    "InputRef",
    "JobCancel",
    "JobRequest",
    "JobState",
    "JobStatus",
    "JobSubmit",
    "LogChunk",
    "Message",
    "Offer",
    "OfferWithdrawal",
    "PriceBasis",
    "Quote",
    "Reject",
    "RejectCode",
    "ResultRef",
    "UsageReceipt",
    "digest",
    "image_allowed",
]

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1


def _check_wallet(value: str) -> str:
    PublicKey.from_wallet(value)  # raises ValueError -> pydantic ValidationError
    return value


Wallet = Annotated[str, StringConstraints(min_length=32, max_length=44), AfterValidator(_check_wallet)]
Amount = Annotated[int, Field(ge=0, le=U64_MAX, strict=True)]
PositiveAmount = Annotated[int, Field(gt=0, le=U64_MAX, strict=True)]
Minutes = Annotated[int, Field(gt=0, le=U32_MAX, strict=True)]
Timestamp = Annotated[int, Field(ge=0, le=2**62, strict=True)]
Seq = Annotated[int, Field(ge=0, le=U64_MAX, strict=True)]
Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16,64}$")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w .:/@+-]+$")]
ContentId = Annotated[str, StringConstraints(pattern=r"^sha256-[0-9a-f]{64}$")]
ShortText = Annotated[str, StringConstraints(max_length=512)]

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_RELATIVE_PATH = re.compile(r"^[\w.\-/]{1,255}$")


def _check_relative_path(path: str) -> str:
    if not _RELATIVE_PATH.match(path) or path.startswith("/") or ".." in path.split("/"):
        raise ValueError("an input path is relative, without '..', of [A-Za-z0-9_.-/]")
    return path



class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False, populate_by_name=False)

    def canonical(self) -> bytes:
        """The canonical bytes of this message (what gets signed)."""
        return canonical_bytes_of_checked(self.model_dump(mode="json"))


def digest(model: _Model) -> str:
    """Hex SHA-256 of a message's canonical bytes: how one message refers to another."""
    return hashlib.sha256(model.canonical()).hexdigest()


class Executor(StrEnum):
    DOCKER = "docker"
    """An isolated container (the default)."""
    SCRIPT = "script"
    """A shell script in a scratch folder, opt-in by the provider; weaker isolation."""


class GpuSpec(_Model):
    """One kind of GPU in an offer."""

    model: Label
    vram_mib: Annotated[int, Field(gt=0, le=2**24, strict=True)]
    count: Annotated[int, Field(ge=1, le=64, strict=True)] = 1
    compute_capability: Annotated[str, StringConstraints(pattern=r"^\d{1,2}\.\d{1,2}$")] | None = None
    #: true when the inventory is simulated (development networks only); renters' policy decides
    simulated: bool = False


class PriceBasis(_Model):
    """Which inputs produced an offer's rate (so a renter can see why, and recompute it).

    ``source="engine"``: ``price_per_minute = rate_per_minute(hourly_price(model, VRAM, power,
    multiplier_bps / 10000))`` (``dgpu.protocol.pricing.priced``) with the multiplier from ``demand``
    and ``supply`` clamped to the provider's bounds; ``"override"``: the provider set it (``--price``)."""

    source: Literal["engine", "override"]
    #: the GPU kind priced (the offer's priciest)
    model: Label
    vram_mib: Annotated[int, Field(ge=0, le=2**24, strict=True)]
    power_limit_w: Annotated[int, Field(ge=0, le=100_000, strict=True)] = 0
    #: the engine's rate at multiplier 1 (base units per GPU-minute)
    engine_rate: PositiveAmount
    #: the demand/supply multiplier applied, in basis points (5000..20000 = 0.5..2.0)
    multiplier_bps: Annotated[int, Field(ge=5_000, le=20_000, strict=True)] = 10_000
    #: job requests received plus rentals running over the window
    demand: Annotated[int, Field(ge=0, le=U32_MAX, strict=True)] = 0
    #: comparable offers (same model) in the provider's offer book, its own included
    supply: Annotated[int, Field(ge=0, le=U32_MAX, strict=True)] = 0
    window_s: Annotated[int, Field(ge=0, le=U32_MAX, strict=True)] = 0


#: Offer fields added after version 1: left out of the wire form when unset, so an offer signed
#: by a node that does not know them still verifies (the signature covers the dumped fields)
_OFFER_OPTIONAL = ("pricing", "free_gpus", "forward", "shell", "images")

#: an allowed image: an exact reference, or a prefix ending in ``*`` (``pytorch/pytorch:*``)
ImagePattern = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[a-z0-9][\w.:/@+*-]*$")]


def image_allowed(patterns: tuple[str, ...], image: str) -> bool:
    """Whether ``image`` is one of ``patterns`` (exact names, or prefixes ending in ``*``)."""
    return any(image == p or (p.endswith("*") and image.startswith(p[:-1])) for p in patterns)


class Offer(_Model):
    """A provider's signed advertisement. A higher ``seq`` from the same provider replaces it."""

    type: Literal["offer"] = "offer"
    provider: Wallet
    #: multiaddrs to dial the provider at (its peer id is derived from ``provider``)
    addrs: Annotated[tuple[Annotated[str, StringConstraints(max_length=256)], ...], Field(max_length=8)] = ()
    gpus: Annotated[tuple[GpuSpec, ...], Field(min_length=1, max_length=16)]
    #: price of one GPU for one minute, in the mint's base units
    price_per_minute: PositiveAmount
    mint: Wallet
    #: which ledger holds the escrow: "dev" (development ledger) or "solana:<cluster>"
    ledger: Label
    min_minutes: Minutes = 1
    max_minutes: Minutes = 24 * 60
    region: Label = "unknown"
    executors: Annotated[tuple[Executor, ...], Field(min_length=1, max_length=2)] = (Executor.DOCKER,)
    seq: Seq
    issued_at: Timestamp
    expires_at: Timestamp
    #: which inputs produced ``price_per_minute`` (absent in offers from older nodes)
    pricing: PriceBasis | None = None
    #: GPUs no rental holds now (capacity follows leases); absent: unknown (older nodes)
    free_gpus: Annotated[int, Field(ge=0, le=1024, strict=True)] | None = None
    #: the provider forwards renters' TCP connections into their jobs' ports / opens shells in
    #: them (``--allow-forward`` / ``--allow-shell``); None: it does not (or an older node)
    forward: Literal[True] | None = None
    shell: Literal[True] | None = None
    #: the Docker images it runs (docker executor); absent: not said (older nodes, no docker)
    images: Annotated[tuple[ImagePattern, ...], Field(max_length=16)] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_optional(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in _OFFER_OPTIONAL:
            if data.get(name, 0) is None:
                del data[name]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.free_gpus is not None and self.free_gpus > self.gpu_count:
            raise ValueError("free_gpus exceeds the GPUs offered")
        if self.min_minutes > self.max_minutes:
            raise ValueError("min_minutes exceeds max_minutes")
        if len(set(self.executors)) != len(self.executors):
            raise ValueError("duplicate executor")
        return self

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)

    @property
    def simulated(self) -> bool:
        return any(g.simulated for g in self.gpus)

    def allows_image(self, image: str) -> bool:
        """False only when the offer lists its images and ``image`` is not one of them."""
        return self.images is None or image_allowed(self.images, image)


class OfferWithdrawal(_Model):
    """A provider takes its offer back (it stops or pauses): peers drop the offer at once.

    It is ordered with the provider's offers by ``seq``: it removes an offer with a lower ``seq``,
    and only an offer with a higher one (the provider resumed or restarted) is taken after it.
    Signed by the provider like its offers, so nobody else can withdraw them."""

    type: Literal["offer_withdrawal"] = "offer_withdrawal"
    provider: Wallet
    seq: Seq
    issued_at: Timestamp
    reason: Literal["stopped", "paused"] = "stopped"


class InputRef(_Model):
    """A job input: content id (pinned on a bootstrap node or held by the renter) and where it goes."""

    path: Annotated[str, AfterValidator(_check_relative_path)]
    cid: ContentId


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise ValueError(f"invalid environment variable name {key[:40]!r}")
        if len(value) > 4096:
            raise ValueError(f"environment variable {key} is longer than 4096 characters")
    return env


#: JobRequest fields added after version 1, left out of the wire form at their defaults (so a
#: provider that does not know them still reads requests that do not use them)
_REQUEST_OPTIONAL = ("forward_ports", "interactive", "stop_on_disconnect", "result_upload")
#: a signed upload link of the renter's bootstrap storage (the signature is in its query)
UploadLink = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^https?://[!-~]+$")]
#: ports of the job a renter may ask to reach (each forwarded connection is its own stream)
MAX_FORWARD_PORTS = 8
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]


class JobRequest(_Model):
    """A renter asks a provider for a price for this job."""

    type: Literal["job_request"] = "job_request"
    request_id: Id
    renter: Wallet
    provider: Wallet
    #: the offer the request answers (its ``seq``), so a stale view is noticed
    offer_seq: Seq
    gpu_model: Label | None = None
    min_vram_mib: Annotated[int, Field(ge=0, le=2**24, strict=True)] = 0
    gpu_count: Annotated[int, Field(ge=0, le=64, strict=True)] = 1
    executor: Executor = Executor.DOCKER
    image: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    script: Annotated[str, StringConstraints(min_length=1, max_length=32 * 1024)] | None = None
    command: Annotated[tuple[Annotated[str, StringConstraints(max_length=4096)], ...], Field(max_length=64)] = ()
    env: Annotated[dict[str, str], Field(max_length=64), AfterValidator(_check_env)] = Field(default_factory=dict)
    inputs: Annotated[tuple[InputRef, ...], Field(max_length=64)] = ()
    max_minutes: Minutes
    #: the most the renter pays per minute for the whole job (all GPUs), base units
    max_price_per_minute: PositiveAmount
    egress: bool = False
    #: stop the job when the renter's stream breaks; by default a batch job runs on without it
    stop_on_disconnect: bool = False
    #: TCP ports inside the job the renter will reach over ``/dgpu/forward/1.0.0`` (the provider
    #: must allow forwarding); the job itself keeps no network
    forward_ports: Annotated[tuple[Port, ...], Field(max_length=MAX_FORWARD_PORTS)] = ()
    #: runs until the renter closes it or the paid minutes end, not until its command exits
    interactive: bool = False
    #: where the provider PUTs the packed result after keeping it (a bootstrap upload link)
    result_upload: UploadLink | None = None

    @model_serializer(mode="wrap")
    def _drop_default_optional(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in _REQUEST_OPTIONAL:
            if name in data and not data[name]:  # () / False: the default
                del data[name]
        return data

    @model_validator(mode="after")
    def _unique_ports(self) -> Self:
        if len(set(self.forward_ports)) != len(self.forward_ports):
            raise ValueError("duplicate forward port")
        return self

    @model_validator(mode="after")
    def _payload_matches_executor(self) -> Self:
        if self.executor is Executor.DOCKER and (self.image is None or self.script is not None):
            raise ValueError("a docker job names an image and no script")
        if self.executor is Executor.SCRIPT and (self.script is None or self.image is not None):
            raise ValueError("a script job carries a script and no image")
        return self


class Quote(_Model):
    """The provider's price for a request; binding until ``expires_at``."""

    type: Literal["quote"] = "quote"
    request_id: Id
    quote_id: Id
    provider: Wallet
    #: price per minute for the whole job (price per GPU x GPUs), base units
    rate_per_minute: PositiveAmount
    max_minutes: Minutes
    #: rate_per_minute * max_minutes: what the renter must lock in escrow
    deposit: PositiveAmount
    fee_bps: Annotated[int, Field(ge=0, le=10_000, strict=True)]
    mint: Wallet
    ledger: Label
    #: the provider must start the rental strictly before this time or the renter is refunded
    start_deadline: Timestamp
    expires_at: Timestamp

    @model_validator(mode="after")
    def _deposit_is_product(self) -> Self:
        if self.deposit != self.rate_per_minute * self.max_minutes:
            raise ValueError("deposit must equal rate_per_minute * max_minutes")
        return self

    @classmethod
    def for_request(cls, request: JobRequest, *, quote_id: str, rate_per_minute: int, fee_bps: int,
                    mint: str, ledger: str, start_deadline: int, expires_at: int) -> Quote:
        """The quote answering ``request``: its id, provider and minutes, deposit = rate x minutes."""
        return cls(request_id=request.request_id, quote_id=quote_id, provider=request.provider,
                   rate_per_minute=rate_per_minute, max_minutes=request.max_minutes,
                   deposit=rate_per_minute * request.max_minutes, fee_bps=fee_bps, mint=mint, ledger=ledger,
                   start_deadline=start_deadline, expires_at=expires_at)


class RejectCode(StrEnum):
    """Machine-readable reasons for a ``Reject``."""

    NO_CAPACITY = "no_capacity"
    PRICE_TOO_LOW = "price_too_low"
    PRICE_TOO_HIGH = "price_too_high"
    GPU_MISMATCH = "gpu_mismatch"
    EXECUTOR_NOT_OFFERED = "executor_not_offered"
    IMAGE_NOT_ALLOWED = "image_not_allowed"
    EGRESS_NOT_ALLOWED = "egress_not_allowed"
    DURATION_OUT_OF_RANGE = "duration_out_of_range"
    STALE_OFFER = "stale_offer"
    QUOTE_EXPIRED = "quote_expired"
    ESCROW_INVALID = "escrow_invalid"
    INVALID_REQUEST = "invalid_request"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    REPLAY = "replay"
    TIMEOUT = "timeout"
    PROTOCOL_ERROR = "protocol_error"
    UNSUPPORTED_VERSION = "unsupported_version"
    BUSY = "busy"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


class Reject(_Model):
    """A refusal with a reason code; ends the negotiation (or a job stream request)."""

    type: Literal["reject"] = "reject"
    request_id: Id
    code: RejectCode
    message: ShortText = ""


class EscrowRef(_Model):
    """Where the renter locked the deposit."""

    ledger: Label
    #: the escrow account (Solana PDA, or the development ledger's id for it)
    address: Annotated[str, StringConstraints(min_length=1, max_length=88)]
    rental_id: Seq


class AgreementTerms(_Model):
    """Everything both parties sign. Built the same way on both sides by :func:`agreement_terms`."""

    type: Literal["agreement_terms"] = "agreement_terms"
    request_id: Id
    quote_id: Id
    #: digest of the JobRequest: the job that was priced is the job that runs
    job_digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    renter: Wallet
    provider: Wallet
    rate_per_minute: PositiveAmount
    max_minutes: Minutes
    deposit: PositiveAmount
    fee_bps: Annotated[int, Field(ge=0, le=10_000, strict=True)]
    mint: Wallet
    start_deadline: Timestamp
    executor: Executor
    escrow: EscrowRef


class Accept(_Model):
    """The renter accepts a quote, names the funded escrow and signs the terms."""

    type: Literal["accept"] = "accept"
    request_id: Id
    quote_id: Id
    escrow: EscrowRef
    #: base64 Ed25519 signature of the renter over the AgreementTerms (domain "agreement_terms")
    renter_sig: Annotated[str, StringConstraints(min_length=80, max_length=100)]


class Agreement(_Model):
    """The terms with both parties' signatures: the contract a job runs under."""

    type: Literal["agreement"] = "agreement"
    terms: AgreementTerms
    renter_sig: Annotated[str, StringConstraints(min_length=80, max_length=100)]
    provider_sig: Annotated[str, StringConstraints(min_length=80, max_length=100)]

    @property
    def agreement_id(self) -> str:
        return digest(self.terms)


class JobState(StrEnum):
    """A job's lifecycle as the provider reports it."""

    ACCEPTED = "accepted"
    STARTING = "starting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_JOB_STATES


_TERMINAL_JOB_STATES = frozenset({JobState.FINISHED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})


class JobSubmit(_Model):
    """The renter starts the job an Agreement covers."""

    type: Literal["job_submit"] = "job_submit"
    agreement: Agreement


class JobCancel(_Model):
    type: Literal["job_cancel"] = "job_cancel"
    job_id: Id
    reason: ShortText = ""


class JobStatus(_Model):
    """A lifecycle event; the terminal one carries the exit code."""

    type: Literal["job_status"] = "job_status"
    job_id: Id
    seq: Seq
    state: JobState
    at: Timestamp
    exit_code: Annotated[int, Field(ge=-255, le=255, strict=True)] | None = None
    reason: ShortText = ""


class LogChunk(_Model):
    """Ordered log output: ``seq`` counts chunks of one job from 0 without gaps."""

    type: Literal["log_chunk"] = "log_chunk"
    job_id: Id
    seq: Seq
    stream: Literal["stdout", "stderr"]
    data: Annotated[str, StringConstraints(max_length=MAX_LOG_CHUNK_CHARS)]


class GpuSample(_Model):
    """One GPU's averages over a metered minute."""

    uuid: Annotated[str, StringConstraints(max_length=96)]
    utilization_pct: Annotated[int, Field(ge=0, le=100, strict=True)]
    memory_used_mib: Annotated[int, Field(ge=0, strict=True)]
    power_mw: Annotated[int, Field(ge=0, strict=True)]
    temperature_c: Annotated[int, Field(ge=-50, le=200, strict=True)]


class UsageReceipt(_Model):
    """The provider's signed statement of one metered minute (what billing counts)."""

    type: Literal["usage_receipt"] = "usage_receipt"
    job_id: Id
    agreement_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    #: 0-based index of the minute since the job started; each index is billed at most once
    minute_index: Annotated[int, Field(ge=0, le=U32_MAX, strict=True)]
    #: whole minutes metered so far, including this one
    minutes_total: Annotated[int, Field(ge=1, le=U32_MAX, strict=True)]
    at: Timestamp
    gpus: Annotated[tuple[GpuSample, ...], Field(max_length=64)] = ()


class ResultRef(_Model):
    """Where the job's output folder was stored (a content id), once the job ended."""

    type: Literal["result_ref"] = "result_ref"
    job_id: Id
    cid: ContentId
    size: Amount
    #: the result was also pushed to the renter's upload link (None: none given, or it failed)
    pushed: bool | None = None
    #: why the push failed (never the link itself)
    push_error: Annotated[str, StringConstraints(max_length=200)] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_push(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in ("pushed", "push_error"):  # added after version 1: off the wire when unset
            if data.get(name) is None:
                data.pop(name, None)
        return data


Message = (
    Offer | OfferWithdrawal | JobRequest | Quote | Reject | Accept | Agreement | AgreementTerms
    | JobSubmit | JobCancel | JobStatus | LogChunk | UsageReceipt | ResultRef
)

MESSAGE_TYPES: dict[str, type[_Model]] = {
    cls.model_fields["type"].default: cls
    for cls in (Offer, OfferWithdrawal, JobRequest, Quote, Reject, Accept, Agreement, AgreementTerms,
                JobSubmit, JobCancel, JobStatus, LogChunk, UsageReceipt, ResultRef)
}


def _adapter(*types: Any) -> TypeAdapter[Any]:
    if len(types) == 1:
        return TypeAdapter(types[0])
    union: Any = types[0]
    for t in types[1:]:
        union = union | t
    return TypeAdapter(Annotated[union, Field(discriminator="type")])


GOSSIP_ADAPTER: TypeAdapter[Offer] = _adapter(Offer)
OFFERS_TOPIC_ADAPTER: TypeAdapter[Offer | OfferWithdrawal] = _adapter(Offer, OfferWithdrawal)
TO_PROVIDER_NEGOTIATION: TypeAdapter[JobRequest | Accept] = _adapter(JobRequest, Accept)
TO_RENTER_NEGOTIATION: TypeAdapter[Quote | Reject | Agreement] = _adapter(Quote, Reject, Agreement)
TO_PROVIDER_JOB: TypeAdapter[JobSubmit | JobCancel] = _adapter(JobSubmit, JobCancel)
TO_RENTER_JOB: TypeAdapter[JobStatus | LogChunk | UsageReceipt | ResultRef | Reject] = _adapter(
    JobStatus, LogChunk, UsageReceipt, ResultRef, Reject
)
