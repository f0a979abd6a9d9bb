"""A blocking facade over :class:`~dgpu.client.client.Client` for notebooks and scripts.

::

    with SyncClient(bootstrap=[addr], ledger_url=url) as gpu:
        offers = gpu.find_offers(gpu_model="RTX 4090")
        result = gpu.run(offers[0], image="pytorch/pytorch:2.4", command=["python", "train.py"], max_minutes=20)

The async client runs on its own trio loop in a background thread; each method hands one call
to that loop and blocks until it returns (exceptions come back unchanged).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from dgpu.client.client import Client, OfferInfo, RentalResult
from dgpu.client.errors import NotConnected
from dgpu.protocol.messages import LogChunk

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """Blocking twin of :class:`Client`; use as a context manager (or call :meth:`close`)."""

    def __init__(self, bootstrap: Sequence[str], *, start_timeout_s: float = 30.0, **connect: Any) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._client: Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, tuple(bootstrap), connect),
                                        name="dgpu-client", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout_s):
            raise NotConnected("the client's node did not start in time")
        if self._error is not None:
            raise self._error

    async def _main(self, bootstrap: tuple[str, ...], connect: dict[str, Any]) -> None:
        try:
            async with Client.connect(bootstrap, **connect) as client:
                self._client, self._token, self._stop = client, trio.lowlevel.current_trio_token(), trio.Event()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # handed to the constructor's thread; nothing is lost
            self._error = exc
            self._ready.set()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._token is None or self._client is None or not self._thread.is_alive():
            raise NotConnected("the client is closed")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    @property
    def wallet(self) -> str:
        if self._client is None:
            raise NotConnected("the client is closed")
        return self._client.wallet

    def find_offers(self, **filters: Any) -> list[OfferInfo]:
        assert self._client is not None
        client = self._client
        result: list[OfferInfo] = self._call(lambda: client.find_offers(**filters))
        return result

    def balance(self) -> int:
        assert self._client is not None
        return int(self._call(self._client.balance))

    def faucet(self, amount: int) -> int:
        """Development ledgers only: mint ``amount`` worthless base units to this wallet."""
        assert self._client is not None
        client = self._client
        return int(self._call(lambda: client.faucet(amount)))

    def run(self, offer: OfferInfo | None = None, *, on_log: Callable[[LogChunk], None] | None = None,
            **job: Any) -> RentalResult:
        """Rent (``offer`` or the cheapest match), run the job to its end, settle; blocks."""
        assert self._client is not None
        client = self._client

        async def rent_and_run() -> RentalResult:
            rental = await client.rent(offer, **job)
            return await rental.run(on_log=on_log)

        result: RentalResult = self._call(rent_and_run)
        return result

    def close(self) -> None:
        if self._stop is not None and self._token is not None and self._thread.is_alive():
            stop = self._stop
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join(timeout=30)
        self._token = None

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
