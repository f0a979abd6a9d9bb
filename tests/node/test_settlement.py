"""Settlement that always lands (issue 16 item 1), against the real development ledger in process.

The ledger "goes down" by its HTTP transport refusing connections; the settlement store is the real
SQLite adapter, reopened to play a restarted node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from fastapi import FastAPI

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.contracts.devledger.model import DevLedgerConfig
from dgpu.contracts.devledger.server import ledger_router
from dgpu.node.adapters.settlement_store import SettlementStore
from dgpu.node.services.settlement import Settlements, settle_rental
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.ledger import EscrowHandle, EscrowReceipt, LedgerUnavailable

T0 = 1_800_000_000
RATE = 1_000


class Flaky(httpx.AsyncBaseTransport):
    """The ledger's transport; ``down`` refuses every request, as a ledger host that is gone."""

    def __init__(self, app: FastAPI) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self.down = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self._inner.handle_async_request(request)


@dataclass
class Net:
    renter: DevLedgerEscrow
    provider: DevLedgerEscrow
    transport: Flaky
    now: int = T0

    async def advance(self, seconds: int) -> None:
        self.now += seconds
        await self.renter.set_time(self.now)

    async def started_rental(self, minutes: int = 10) -> EscrowHandle:
        handle = (await self.renter.open(1, self.provider.wallet, RATE, minutes, T0 + 300)).escrow
        await self.provider.start(handle)
        return handle


@asynccontextmanager
async def ledger(tmp_path: Path) -> AsyncIterator[Net]:
    app = FastAPI()
    app.include_router(ledger_router(DevLedgerConfig(db_path=tmp_path / "ledger.sqlite", test_mode=True,
                                                     faucet_interval_s=0)))
    transport = Flaky(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as http:
        net = Net(DevLedgerEscrow("http://ledger", SigningKey(b"r" * 32), client=http),
                  DevLedgerEscrow("http://ledger", SigningKey(b"p" * 32), client=http), transport)
        await net.renter.set_time(T0)
        await net.renter.faucet(1_000_000)
        yield net


async def wait_closed(net: Net, handle: EscrowHandle) -> None:
    with trio.fail_after(30):
        while (await net.renter.fetch(handle.address)).status is not EscrowStatus.CLOSED:
            await trio.sleep(0.01)


async def test_a_close_during_an_outage_is_kept_and_lands_after_a_restart(tmp_path: Path) -> None:
    async with ledger(tmp_path) as net:
        handle = await net.started_rental()
        await net.advance(3 * 60)
        store = await SettlementStore.open(tmp_path / "settlements.sqlite3")
        settlements = Settlements(net.provider, store, ledger_now=lambda: net.now)
        net.transport.down = True
        result = await settlements.settle(handle)  # the job ended; the ledger is unreachable
        assert not result.done and result.error is not None
        await store.close()  # the provider process stops before the ledger is back

        receipts: list[EscrowReceipt] = []

        async def record(receipt: EscrowReceipt) -> None:
            receipts.append(receipt)

        store = await SettlementStore.open(tmp_path / "settlements.sqlite3")  # ... and starts again
        [pending] = await store.pending()
        assert pending.handle == handle and pending.action == "close" and pending.attempts == 1
        restarted = Settlements(net.provider, store, ledger_now=lambda: net.now, record=record)
        async with trio.open_nursery() as nursery:
            await nursery.start(restarted.run)
            net.transport.down = False  # the ledger is back: the retry lands
            await wait_closed(net, handle)
            nursery.cancel_scope.cancel()
        view = await net.renter.fetch(handle.address)
        assert view.claimed_minutes == 3 and view.paid + view.fee_paid + view.refunded == view.deposited
        assert [r.action for r in receipts] == ["close"] and await store.pending() == []
        await store.close()


async def test_an_armed_guard_settles_an_abandoned_rental_once_it_expires(tmp_path: Path) -> None:
    async with ledger(tmp_path) as net:
        handle = await net.started_rental(minutes=5)
        store = await SettlementStore.open(tmp_path / "settlements.sqlite3")
        view = await net.provider.fetch(handle.address)
        assert view.expires_at is not None
        # looks at least every 0.2 s (30 s in a node): the bound past expiry
        settlements = Settlements(net.provider, store, ledger_now=lambda: net.now, retry_max_s=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(settlements.run)
            await settlements.arm(handle, view.expires_at)  # then both sides go silent
            await trio.sleep(0.5)
            assert (await net.renter.fetch(handle.address)).status is EscrowStatus.OPEN  # not before expiry
            await net.advance(5 * 60)
            await wait_closed(net, handle)
            nursery.cancel_scope.cancel()
        view = await net.renter.fetch(handle.address)
        assert view.claimed_minutes == 5 and view.refunded == 0 and view.vault_balance == 0
        await store.close()


async def test_the_renter_is_told_the_ledger_is_unavailable_and_what_happens_next(tmp_path: Path) -> None:
    async with ledger(tmp_path) as net:
        handle = await net.started_rental()
        store = await SettlementStore.open(tmp_path / "settlements.sqlite3")
        settlements = Settlements(net.renter, store, ledger_now=lambda: net.now)
        net.transport.down = True
        with pytest.raises(LedgerUnavailable, match="retries it") as raised:
            await settle_rental(net.renter, handle, settlements, wait_s=0)
        assert raised.value.escrow == handle.address
        assert [p.handle for p in await store.pending()] == [handle]  # kept, to be retried
        net.transport.down = False
        view = await settle_rental(net.renter, handle, settlements, wait_s=0)
        assert view is not None and view.status is EscrowStatus.CLOSED and await store.pending() == []
        await store.close()
