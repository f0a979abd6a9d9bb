"""A node starting while the ledger's per-address limit is spent (HTTP 429) waits and retries
instead of exiting; other refusals (the faucet's spent budget) are not retried."""

from __future__ import annotations

import httpx
import pytest

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.contracts.errors import LedgerBusy, RequestRejected, TransportError
from dgpu.node.services.ledger_retry import retry_busy, wait_for_ledger
from dgpu.protocol.keys import SigningKey

MINT = SigningKey(b"\x07" * 32).public_key.wallet
BUSY = {"error": {"code": "rate_limited_ip", "message": "too many requests from this ip, slow down"}}


def _ledger(answers: list[httpx.Response]) -> tuple[DevLedgerEscrow, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return DevLedgerEscrow("http://ledger", SigningKey(b"p" * 32), client=http), seen


async def test_busy_answers_are_retried_after_the_wait_the_ledger_asks_for() -> None:
    info = {"ledger_id": "dev", "mint": MINT, "decimals": 6, "now": 1, "clock_speed": 1}
    ledger, seen = _ledger([httpx.Response(429, json=BUSY, headers={"retry-after": "3"}),
                            httpx.Response(429, json=BUSY), httpx.Response(200, json=info)])
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    mint = await retry_busy(ledger.mint_info, what="mint", sleep=sleep, jitter=lambda: 0.0)
    assert mint.address == MINT and len(seen) == 3
    assert slept == [3.0, 1.0]  # what the ledger asked for, else the backoff


async def test_a_ledger_that_stays_busy_ends_in_ledger_busy_and_other_refusals_are_not_retried() -> None:
    ledger, seen = _ledger([httpx.Response(429, json=BUSY) for _ in range(3)])

    async def sleep(s: float) -> None:
        del s

    with pytest.raises(LedgerBusy):
        await retry_busy(ledger.mint_info, what="mint", tries=3, sleep=sleep)
    assert len(seen) == 3
    spent = {"error": {"kind": "request", "code": "faucet_rate_limited", "message": "hourly budget spent"}}
    ledger, seen = _ledger([httpx.Response(429, json=spent)])
    with pytest.raises(RequestRejected):
        await retry_busy(lambda: ledger.faucet(10), what="faucet", sleep=sleep)
    assert len(seen) == 1


async def test_a_provider_starting_during_a_ledger_outage_waits_for_it_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    info = {"ledger_id": "dev", "mint": MINT, "decimals": 6, "now": 1, "clock_speed": 1}
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= 4:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=info)

    ledger = DevLedgerEscrow("http://ledger", SigningKey(b"p" * 32),
                             client=httpx.AsyncClient(transport=httpx.MockTransport(handle)))
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    mint = await wait_for_ledger(ledger.mint_info, what="reading the ledger's mint", url="http://ledger",
                                 sleep=sleep, jitter=lambda: 0.0, max_delay_s=2.0)
    assert mint.address == MINT and len(calls) == 5
    assert slept == [0.5, 1.0, 2.0, 2.0]  # backoff, capped
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 4 and "cannot reach the ledger at http://ledger" in warnings[0]
    # bounded when asked: the last TransportError propagates
    calls.clear()
    with pytest.raises(TransportError):
        await wait_for_ledger(ledger.mint_info, what="mint", tries=2, sleep=sleep)
    assert len(calls) == 2
