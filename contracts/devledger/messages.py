"""Requests to the development ledger: frozen pydantic models sealed in signed envelopes.

Each request is one ``type`` (so the envelope's domain separation, ``dgpu/1/<type>\\0``, keeps a
signed claim from ever being read as a close), names the ledger it is meant for (``ledger``, so a
request signed for one development ledger cannot be replayed against another) and carries only
the instruction's arguments: the actor is whoever signed the envelope, never a field.

Integer fields are bounded by their on-chain wire types (u64, u32, i64), not by the escrow rules:
``rate_per_minute = 0`` is a well-formed request that the ledger refuses with ``InvalidAmount``,
exactly as the program would.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

__all__ = [
    "ESCROW_ACTIONS",
    "PREFIX",
    "REQUEST_ADAPTER",
    "ClaimRequest",
    "CloseRequest",
    "FaucetRequest",
    "LedgerRequest",
    "OpenRequest",
    "RefundUnstartedRequest",
    "SettleExpiredRequest",
    "StartRequest",
    "TopUpRequest",
    "TransferRequest",
]

#: where the ledger's routes live on a bootstrap node's HTTP server (client and server share it)
PREFIX = "/api/v1/ledger"

U64 = Annotated[int, Field(ge=0, le=2**64 - 1, strict=True)]
U32 = Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)]
I64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, strict=True)]
Address = Annotated[str, StringConstraints(min_length=32, max_length=44, pattern=r"^[1-9A-HJ-NP-Za-km-z]+$")]
LedgerId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w.:-]+$")]


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    #: the ledger id this request is meant for (``GET /info`` tells it)
    ledger: LedgerId


class OpenRequest(_Request):
    type: Literal["devledger_open"] = "devledger_open"
    provider: Address
    rental_id: U64
    rate_per_minute: U64
    max_minutes: U32
    start_deadline: I64


class _OnEscrow(_Request):
    escrow: Address


class StartRequest(_OnEscrow):
    type: Literal["devledger_start"] = "devledger_start"


class ClaimRequest(_OnEscrow):
    type: Literal["devledger_claim"] = "devledger_claim"


class TopUpRequest(_OnEscrow):
    type: Literal["devledger_top_up"] = "devledger_top_up"
    extra_minutes: U32


class CloseRequest(_OnEscrow):
    type: Literal["devledger_close"] = "devledger_close"


class SettleExpiredRequest(_OnEscrow):
    type: Literal["devledger_settle_expired"] = "devledger_settle_expired"


class RefundUnstartedRequest(_OnEscrow):
    type: Literal["devledger_refund_unstarted"] = "devledger_refund_unstarted"


class FaucetRequest(_Request):
    """Development tokens for the signer's own wallet (bounded, rate-limited per wallet)."""

    type: Literal["devledger_faucet"] = "devledger_faucet"
    amount: U64


class TransferRequest(_Request):
    """Move tokens from the signer's wallet to another wallet (a withdrawal)."""

    type: Literal["devledger_transfer"] = "devledger_transfer"
    to: Address
    amount: U64


LedgerRequest = Annotated[
    OpenRequest | StartRequest | ClaimRequest | TopUpRequest | CloseRequest | SettleExpiredRequest
    | RefundUnstartedRequest | FaucetRequest | TransferRequest,
    Field(discriminator="type"),
]
#: what ``POST /tx`` accepts inside the envelope
REQUEST_ADAPTER: TypeAdapter[LedgerRequest] = TypeAdapter(LedgerRequest)

ESCROW_ACTIONS: dict[str, str] = {
    "devledger_start": "start",
    "devledger_claim": "claim",
    "devledger_top_up": "top_up",
    "devledger_close": "close",
    "devledger_settle_expired": "settle_expired",
    "devledger_refund_unstarted": "refund_unstarted",
}

