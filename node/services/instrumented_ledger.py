"""The escrow ledger, counted: a decorator object around any :class:`EscrowLedger` that reports
every call (method, outcome, seconds) to a :class:`~dgpu.node.ports.metrics.LedgerObserver`.

The app wraps the ledger client once (``app.open_ledger``), so every service that holds the
ledger (billing, the escrow gate, the verifier, the renter, the local API) is counted without
any of them knowing. Outcomes are a small fixed set taken from the port's error tree:
``ok``, ``refused`` (:class:`LedgerError`), ``rejected`` (:class:`RequestRejected`),
``timeout`` / ``transport`` (:class:`TransportError`), ``unconfirmed``
(:class:`ConfirmationError`), ``cancelled`` and ``error`` (anything else). Errors propagate
unchanged. Methods of a particular client beyond the port (the development ledger's ``faucet``)
are passed through and counted the same way.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from dgpu.node.ports.metrics import LedgerObserver
from dgpu.protocol.ledger import (
    ConfirmationError,
    EscrowHandle,
    EscrowLedger,
    EscrowReceipt,
    EscrowView,
    LedgerError,
    LedgerTimeout,
    MintInfo,
    RequestRejected,
    TransportError,
)

__all__ = ["LEDGER_ACTIONS", "LEDGER_OUTCOMES", "InstrumentedLedger", "outcome_of"]

T = TypeVar("T")

#: the port's methods (each is an ``action`` label value)
LEDGER_ACTIONS = ("open", "start", "claim", "top_up", "close", "settle_expired", "refund_unstarted", "fetch",
                  "balance", "mint_info", "now", "clock_speed")
LEDGER_OUTCOMES = ("ok", "refused", "rejected", "timeout", "transport", "unconfirmed", "cancelled", "error")


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` label of a call that raised ``exc`` (None: it returned)."""
    if exc is None:
        return "ok"
    for kind, name in ((LedgerError, "refused"), (RequestRejected, "rejected"), (LedgerTimeout, "timeout"),
                       (TransportError, "transport"), (ConfirmationError, "unconfirmed"),
                       (trio.Cancelled, "cancelled")):
        if isinstance(exc, kind):
            return name
    return "error"


class InstrumentedLedger:
    """``inner`` with every call reported to ``observer`` (implements :class:`EscrowLedger`)."""

    def __init__(self, inner: EscrowLedger, observer: LedgerObserver, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self.observer = observer
        self.ledger = inner.ledger
        self._clock = clock

    @property
    def wallet(self) -> str:
        return self.inner.wallet

    async def _call(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        began = self._clock()
        try:
            result = await call()
        except BaseException as exc:
            self.observer.ledger_call(action, outcome_of(exc), self._clock() - began)
            raise
        self.observer.ledger_call(action, "ok", self._clock() - began)
        return result

    async def open(self, rental_id: int, provider: str, rate_per_minute: int, max_minutes: int,
                   start_deadline: int) -> EscrowReceipt:
        return await self._call("open", lambda: self.inner.open(rental_id, provider, rate_per_minute, max_minutes,
                                                                 start_deadline))

    async def start(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._call("start", lambda: self.inner.start(escrow))

    async def claim(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._call("claim", lambda: self.inner.claim(escrow))

    async def top_up(self, escrow: EscrowHandle, extra_minutes: int) -> EscrowReceipt:
        return await self._call("top_up", lambda: self.inner.top_up(escrow, extra_minutes))

    async def close(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._call("close", lambda: self.inner.close(escrow))

    async def settle_expired(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._call("settle_expired", lambda: self.inner.settle_expired(escrow))

    async def refund_unstarted(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._call("refund_unstarted", lambda: self.inner.refund_unstarted(escrow))

    async def fetch(self, address: str) -> EscrowView:
        return await self._call("fetch", lambda: self.inner.fetch(address))

    async def balance(self, wallet: str) -> int:
        return await self._call("balance", lambda: self.inner.balance(wallet))

    async def mint_info(self) -> MintInfo:
        return await self._call("mint_info", self.inner.mint_info)

    async def now(self) -> int:
        return await self._call("now", self.inner.now)

    async def clock_speed(self) -> int:
        return await self._call("clock_speed", self.inner.clock_speed)

    async def aclose(self) -> None:
        await self.inner.aclose()  # local clean-up, not a ledger call

    def __getattr__(self, name: str) -> Any:
        """A method of this client beyond the port (``faucet``, ``transfer``): counted too."""
        attr = getattr(self.inner, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            return await self._call(name, lambda: attr(*args, **kwargs))

        return counted
