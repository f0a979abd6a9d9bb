"""``DevLedgerEscrow``: the escrow interface over the development ledger's HTTP API.

Runs natively under trio (httpx.AsyncClient). Every mutating call is a request model sealed in
a signed envelope (fresh 16-byte nonce, 60-second validity) with this client's key; the ledger
takes the actor from the signature. httpx errors and error answers are converted here, once,
into ``dgpu.contracts.errors``. A timeout or transport error leaves the outcome unknown: fetch
before retrying (a retry of the *same* envelope would be refused as a replay, by design).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import httpx
from pydantic import BaseModel

from dgpu._http import async_client
from dgpu.protocol.envelope import seal
from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.escrow import Escrow, EscrowStatus
from dgpu.protocol.keys import SigningKey

from ..errors import (
    ContractsError,
    EscrowNotFound,
    EscrowRefused,
    InsufficientFunds,
    LedgerBusy,
    LedgerTimeout,
    ProgramError,
    RequestRejected,
    TransportError,
)
from ..escrow_api import Action, EscrowHandle, EscrowReceipt, EscrowView, MintInfo, Settlement
from .messages import (
    PREFIX,
    ClaimRequest,
    CloseRequest,
    FaucetRequest,
    OpenRequest,
    RefundUnstartedRequest,
    SettleExpiredRequest,
    StartRequest,
    TopUpRequest,
    TransferRequest,
)

__all__ = ["DevLedgerEscrow"]

#: validity window of each signed request (the ledger accepts at most 300 s)
REQUEST_TTL_S = 60
#: largest answer read from the ledger; its answers are a few hundred bytes
MAX_RESPONSE_BYTES = 64 * 1024


class DevLedgerEscrow:
    """The development ledger as an :class:`~dgpu.contracts.escrow_api.EscrowLedger`, acting as ``key``."""

    ledger = "development"

    def __init__(
        self,
        base_url: str,
        key: SigningKey,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        nonce: Callable[[], bytes] = lambda: os.urandom(16),
    ) -> None:
        self._key = key
        self._own_client = client is None
        self._http = client if client is not None else async_client(timeout=timeout_s)
        self._base = base_url.rstrip("/") + PREFIX
        self._wall = wall_clock
        self._nonce = nonce
        self._ledger_id: str | None = None

    @property
    def wallet(self) -> str:
        return self._key.public_key.wallet

    async def aclose(self) -> None:
        if self._own_client:
            await self._http.aclose()

    # -- transport ---------------------------------------------------------------------------

    async def _call(self, method: str, path: str, *, content: bytes | None = None,
                    json: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, self._base + path, content=content, json=json,
                headers={"content-type": "application/json"} if content is not None else None,
            )
        except httpx.TimeoutException as exc:
            raise LedgerTimeout(f"development ledger did not answer {method} {path} in time") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"development ledger unreachable: {type(exc).__name__}") from exc
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise TransportError("development ledger answer is too large")
        try:
            body = response.json()
        except ValueError:
            raise TransportError(f"development ledger answered {response.status_code} without JSON") from None
        if not isinstance(body, dict):
            raise TransportError("development ledger answer is not a JSON object")
        if response.status_code >= 400:
            raise _error_from(response.status_code, body, response.headers.get("retry-after"))
        return body

    async def _ledger(self) -> str:
        if self._ledger_id is None:
            self._ledger_id = str((await self.info())["ledger_id"])
        return self._ledger_id

    async def _send(self, request: BaseModel) -> dict[str, Any]:
        issued = int(self._wall())
        data = seal(request, self._key, nonce=self._nonce(), issued_at=issued,
                    expires_at=issued + REQUEST_TTL_S)
        return await self._call("POST", "/tx", content=data)

    async def _escrow_tx(self, action: Action, request: BaseModel, handle: EscrowHandle) -> EscrowReceipt:
        body = await self._send(request)
        return _receipt(action, handle, body)

    # -- reads -------------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """The ledger's ``/info`` (ledger id, mint, decimals, fee, clock, notice)."""
        return await self._call("GET", "/info")

    async def mint_info(self) -> MintInfo:
        body = await self.info()
        return MintInfo(address=str(body["mint"]), decimals=int(body["decimals"]))

    async def now(self) -> int:
        return int((await self.info())["now"])

    async def clock_speed(self) -> int:
        return int((await self.info()).get("clock_speed", 1))

    async def balance(self, wallet: str) -> int:
        return int((await self._call("GET", f"/balances/{wallet}"))["balance"])

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "/stats")

    async def fetch(self, address: str) -> EscrowView:
        v = (await self._call("GET", f"/escrows/{address}"))["escrow"]
        try:
            record = Escrow(**{f.name: v[f.name] for f in fields(Escrow)})
            record = replace(record, rental_id=int(record.rental_id), status=EscrowStatus(record.status))
            return EscrowView.of(record, ledger=self.ledger, address=str(v["address"]),
                                 vault_balance=int(v["vault_balance"]), now=int(v["now"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError("development ledger sent a malformed escrow view") from exc

    async def settlement(self, escrow: EscrowHandle) -> Settlement | None:
        """The development ledger keeps a closed escrow, totals and all: they are its settlement."""
        view = await self.fetch(escrow.address)
        if view.status is not EscrowStatus.CLOSED:
            return None
        return Settlement(escrow=escrow, deposited=view.deposited, paid=view.paid, fee=view.fee_paid,
                          refunded=view.refunded)

    # -- instructions ------------------------------------------------------------------------

    async def open(
        self, rental_id: int, provider: str, rate_per_minute: int, max_minutes: int, start_deadline: int
    ) -> EscrowReceipt:
        request = OpenRequest(ledger=await self._ledger(), provider=provider, rental_id=rental_id,
                              rate_per_minute=rate_per_minute, max_minutes=max_minutes,
                              start_deadline=start_deadline)
        body = await self._send(request)
        handle = EscrowHandle(ledger=self.ledger, address=str(body["escrow"]), renter=self.wallet,
                              provider=provider, rental_id=rental_id)
        return _receipt("open", handle, body)

    async def start(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._escrow_tx("start", StartRequest(ledger=await self._ledger(), escrow=escrow.address),
                                     escrow)

    async def claim(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._escrow_tx("claim", ClaimRequest(ledger=await self._ledger(), escrow=escrow.address),
                                     escrow)

    async def top_up(self, escrow: EscrowHandle, extra_minutes: int) -> EscrowReceipt:
        request = TopUpRequest(ledger=await self._ledger(), escrow=escrow.address, extra_minutes=extra_minutes)
        return await self._escrow_tx("top_up", request, escrow)

    async def close(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._escrow_tx("close", CloseRequest(ledger=await self._ledger(), escrow=escrow.address),
                                     escrow)

    async def settle_expired(self, escrow: EscrowHandle) -> EscrowReceipt:
        request = SettleExpiredRequest(ledger=await self._ledger(), escrow=escrow.address)
        return await self._escrow_tx("settle_expired", request, escrow)

    async def refund_unstarted(self, escrow: EscrowHandle) -> EscrowReceipt:
        request = RefundUnstartedRequest(ledger=await self._ledger(), escrow=escrow.address)
        return await self._escrow_tx("refund_unstarted", request, escrow)

    # -- development only --------------------------------------------------------------------

    async def faucet(self, amount: int) -> int:
        """Mint ``amount`` development base units (worth nothing) to this wallet; returns the amount."""
        body = await self._send(FaucetRequest(ledger=await self._ledger(), amount=amount))
        return int(body["minted"])

    async def transfer(self, to: str, amount: int) -> str:
        """Send ``amount`` base units from this wallet to ``to`` (a withdrawal); returns the tx id."""
        body = await self._send(TransferRequest(ledger=await self._ledger(), to=to, amount=amount))
        return str(body["tx"])

    async def set_time(self, now: int, *, frozen: bool = True) -> int:
        """Set the ledger clock; the ledger refuses unless it runs in test mode."""
        return int((await self._call("POST", "/admin/time", json={"now": now, "frozen": frozen}))["now"])


def _receipt(action: Action, handle: EscrowHandle, body: dict[str, Any]) -> EscrowReceipt:
    try:
        return EscrowReceipt(
            action=action, escrow=handle, now=int(body["now"]), tx=str(body["tx"]),
            deposited=int(body["deposited"]), paid=int(body["paid"]), fee=int(body["fee"]),
            refunded=int(body["refunded"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TransportError("development ledger sent a malformed receipt") from exc


def _error_from(status: int, body: dict[str, Any], retry_after: str | None = None) -> ContractsError:
    err = body.get("error")
    if not isinstance(err, dict):
        return TransportError(f"development ledger answered {status}")
    kind, code, message = str(err.get("kind")), str(err.get("code")), str(err.get("message", ""))[:500]
    if status == 429 and code.startswith("rate_limited"):  # the HTTP layer's limit, not the faucet's budget
        try:
            wait = min(60.0, max(0.1, float(retry_after or 1)))
        except ValueError:
            wait = 1.0
        return LedgerBusy(f"development ledger is busy ({code}): {message}", retry_after_s=wait)
    if kind == "escrow":
        try:
            return EscrowRefused(EscrowErrorCode(code), message)
        except ValueError:
            return TransportError(f"unknown escrow error code {code!r}")
    if kind == "program":
        return ProgramError(code, message)
    if kind == "funds":
        return InsufficientFunds(message)
    if kind == "not_found":
        return EscrowNotFound(message)
    if kind == "request":
        return RequestRejected(code, message)
    return TransportError(f"development ledger answered {status} ({code})")
