"""HTTP face of the development ledger: ``ledger_router(config)`` for the bootstrap node's app.

Routes (prefix ``/api/v1/ledger``); every answer carries ``"network": "development",
"real_value": false`` because these tokens are worth nothing:

====== ===================== ==============================================================
GET    /info                 ledger id, mint, decimals, fee, treasury, clock, notice
GET    /escrows/{address}    one escrow's state, vault balance, accrued minutes, expiry
GET    /balances/{wallet}    a wallet's token balance in base units
GET    /stats                supply, sum of balances, transactions per action (audits, benches)
POST   /tx                   a signed envelope (``contracts/devledger/messages.py``): one instruction
POST   /admin/time           test mode only: ``{"now": int, "frozen": bool}`` sets the ledger clock
====== ===================== ==============================================================

Errors leave as ``{"error": {"code", "kind", "message"}, ...}`` (the bootstrap node's format plus
``kind``): ``escrow`` (409, ``code`` is the shared EscrowErrorCode), ``program`` and ``funds`` (409),
``not_found`` (404), ``request`` (400 malformed, 401 bad signature or expired, 409 replay, 413 too
large, 429 faucet rate, 403 not test mode).

Storage: stdlib ``sqlite3`` called through ``anyio.to_thread.run_sync`` behind a limiter of 1.
Why not aiosqlite: it would also run SQLite in a thread, adds a dependency on the asyncio side
of trio-asyncio, and gives nothing here — every request is one short transaction, and a single
writer is what SQLite wants anyway. The limiter keeps the event loop free and makes the
check-then-apply of every request atomic with respect to the others.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dgpu.protocol.keys import PublicKey

from ..errors import (
    ContractsError,
    EscrowNotFound,
    EscrowRefused,
    InsufficientFunds,
    ProgramError,
    RequestRejected,
)
from .messages import PREFIX
from .model import NOTICE, DevLedger, DevLedgerConfig, TxOutcome

__all__ = ["PREFIX", "FaucetBudget", "ledger_router"]

T = TypeVar("T")

_LABEL = {"network": "development", "real_value": False}
_REQUEST_STATUS = {
    "invalid_request": 400, "wrong_ledger": 400, "faucet_limit": 400, "bad_signature": 401,
    "expired": 401, "not_test_mode": 403, "replay": 409, "payload_too_large": 413,
    "faucet_rate_limited": 429,
}


class _SetTime(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    now: Annotated[int, Field(ge=0, le=2**62)]
    frozen: bool = True


def _ok(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({**_LABEL, **body}, status_code=status)


def _error(status: int, kind: str, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {**_LABEL, "error": {"code": code, "kind": kind, "message": message[:500]}}, status_code=status
    )


def error_response(exc: ContractsError) -> JSONResponse:
    """The one mapping from ledger errors to HTTP answers (the client maps them back)."""
    if isinstance(exc, EscrowRefused):
        return _error(409, "escrow", exc.code.value, exc.detail)
    if isinstance(exc, ProgramError):
        return _error(409, "program", exc.name, exc.detail)
    if isinstance(exc, InsufficientFunds):
        return _error(409, "funds", "InsufficientFunds", str(exc))
    if isinstance(exc, EscrowNotFound):
        return _error(404, "not_found", "EscrowNotFound", str(exc))
    if isinstance(exc, RequestRejected):
        return _error(_REQUEST_STATUS.get(exc.reason, 400), "request", exc.reason, str(exc))
    return _error(500, "internal", "internal", "unexpected ledger error")


def _outcome(out: TxOutcome) -> dict[str, Any]:
    return {
        "tx": out.tx, "action": out.action, "now": out.now, "escrow": out.escrow,
        "renter": out.renter, "provider": out.provider, "rental_id": out.rental_id,
        "deposited": out.deposited, "paid": out.paid, "fee": out.fee, "refunded": out.refunded,
        "minted": out.minted, "transferred": out.transferred, "destination": out.destination,
    }


@dataclass
class FaucetBudget:
    """Base units the faucet may mint per client address and in all, refilled per hour.

    The ledger limits each wallet; wallets are free, so this bounds what fresh wallets take from
    one address and from everyone. Checked before the request is applied and charged its amount
    (a faucet request that then fails costs its sender budget, never the ledger supply)."""

    per_address_per_hour: int
    global_per_hour: int
    max_addresses: int = 10_000
    clock: Callable[[], float] = time.monotonic
    #: key ('' is the global bucket) -> (units left, when last refilled)
    _left: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    @classmethod
    def for_config(cls, config: DevLedgerConfig) -> FaucetBudget:
        return cls(per_address_per_hour=10 * config.faucet_max, global_per_hour=100 * config.faucet_max)

    def _level(self, key: str, capacity: int, now: float) -> float:
        left, at = self._left.get(key, (float(capacity), now))
        return min(float(capacity), left + (now - at) * capacity / 3600)

    def take(self, address: str, amount: int) -> None:
        """Charge ``amount`` to ``address`` and to the total; RequestRejected when either is spent."""
        now = self.clock()
        mine = self._level(address, self.per_address_per_hour, now)
        total = self._level("", self.global_per_hour, now)
        if amount > mine or amount > total:
            who = "this address" if amount > mine else "all addresses"
            raise RequestRejected("faucet_rate_limited", f"the faucet's hourly budget for {who} is spent; "
                                  "try again later or ask for less")
        self._left[address] = (mine - amount, now)
        self._left[""] = (total - amount, now)
        self._left.move_to_end(address)
        while len(self._left) > self.max_addresses:
            oldest = next(iter(self._left))
            if oldest == "":
                self._left.move_to_end("")
                continue
            del self._left[oldest]


def _faucet_amount(body: bytes) -> int | None:
    """The amount of a faucet envelope, None for anything else (the ledger verifies it fully:
    an envelope whose type is not the payload's is refused there)."""
    try:
        envelope = json.loads(body)
    except ValueError:
        return None
    if not isinstance(envelope, dict) or envelope.get("type") != "devledger_faucet":
        return None
    payload = envelope.get("payload")
    amount = payload.get("amount") if isinstance(payload, dict) else None
    return amount if type(amount) is int and amount > 0 else None


async def _read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused beyond ``limit`` bytes while streaming (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected("payload_too_large", f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected("payload_too_large", f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def ledger_router(config: DevLedgerConfig, *, ledger: DevLedger | None = None,
                  faucet_budget: FaucetBudget | None = None) -> APIRouter:
    """The development ledger's routes; opens (or creates) the SQLite file named by ``config``.

    Pass ``ledger`` to share one :class:`DevLedger` (tests close it themselves); ``faucet_budget``
    defaults to ``FaucetBudget.for_config(config)``.
    """
    state = ledger if ledger is not None else DevLedger(config)
    budget = faucet_budget if faucet_budget is not None else FaucetBudget.for_config(config)
    router = APIRouter(prefix=PREFIX, tags=["development ledger (no real value)"])
    # One worker thread at a time: SQLite has one writer, and each request is check-then-apply.
    limiter_box: list[anyio.CapacityLimiter] = []

    async def run(fn: Callable[[], T]) -> T:
        if not limiter_box:
            limiter_box.append(anyio.CapacityLimiter(1))
        return await anyio.to_thread.run_sync(fn, limiter=limiter_box[0])

    @router.get("/info")
    async def info() -> JSONResponse:
        now = state.clock.now()
        return _ok({
            "ledger_id": config.ledger_id, "mint": state.mint, "decimals": state.decimals,
            "fee_bps": config.fee_bps, "treasury": state.treasury, "paused": config.paused,
            "now": now, "clock_speed": state.clock.speed, "test_mode": config.test_mode,
            "faucet_max": config.faucet_max, "faucet_interval_s": config.faucet_interval_s,
            "max_body_bytes": config.max_body_bytes, "notice": NOTICE,
        })

    @router.get("/escrows/{address}")
    async def get_escrow(address: str) -> JSONResponse:
        if not 32 <= len(address) <= 44:
            return _error(400, "request", "invalid_request", "not an escrow address")
        try:
            view = await run(lambda: state.view(address))
        except ContractsError as exc:
            return error_response(exc)
        return _ok({"escrow": view})

    @router.get("/balances/{wallet}")
    async def get_balance(wallet: str) -> JSONResponse:
        try:
            PublicKey.from_wallet(wallet)
        except ValueError:
            return _error(400, "request", "invalid_request", "not a wallet address")
        amount = await run(lambda: state.balance(wallet))
        return _ok({"wallet": wallet, "balance": amount, "mint": state.mint, "decimals": state.decimals})

    @router.get("/stats")
    async def stats() -> JSONResponse:
        return _ok(await run(state.stats))

    @router.post("/tx")
    async def submit(request: Request) -> JSONResponse:
        try:
            body = await _read_bounded(request, config.max_body_bytes)
            amount = _faucet_amount(body)
            if amount is not None and amount <= config.faucet_max:  # larger: the ledger refuses it
                budget.take(request.client.host if request.client is not None else "unknown", amount)
            out = await run(lambda: state.submit(body))
        except ContractsError as exc:
            return error_response(exc)
        return _ok({"notice": NOTICE, **_outcome(out)})

    @router.post("/admin/time")
    async def set_time(request: Request) -> JSONResponse:
        try:
            if not config.test_mode:
                raise RequestRejected("not_test_mode", "the ledger clock can be set only in test mode")
            body = await _read_bounded(request, 256)
            try:
                req = _SetTime.model_validate_json(body)
            except ValidationError:
                raise RequestRejected("invalid_request", "expected {\"now\": int, \"frozen\": bool}") from None
            state.set_time(req.now, frozen=req.frozen)
        except ContractsError as exc:
            return error_response(exc)
        return _ok({"now": state.clock.now()})

    return router
