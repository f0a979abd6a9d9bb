"""The dev ledger's HTTP boundary: forged, replayed, out-of-order, malformed and oversized requests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dgpu.contracts.devledger.messages import ClaimRequest, CloseRequest, FaucetRequest, StartRequest
from dgpu.contracts.devledger.model import escrow_address
from dgpu.contracts.devledger.server import PREFIX
from dgpu.contracts.errors import EscrowNotFound, EscrowRefused, RequestRejected
from dgpu.contracts.escrow_api import EscrowHandle
from dgpu.protocol.canonical import canonical_bytes
from dgpu.protocol.envelope import seal
from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.keys import SigningKey

from .conftest import KEYS, Served, ledger_config, served_ledger

T0 = 1_700_000_000
RENTER, PROVIDER, STRANGER = (KEYS[n].public_key.wallet for n in ("renter", "provider", "stranger"))


def _sealed(message: Any, key: SigningKey, *, issued: int | None = None, ttl: int = 60) -> bytes:
    at = int(time.time()) if issued is None else issued
    return seal(message, key, nonce=os.urandom(16), issued_at=at, expires_at=at + ttl)


async def _post(served: Served, body: bytes) -> tuple[int, dict[str, Any]]:
    response = await served.http.post(served.base_url + PREFIX + "/tx", content=body)
    payload = response.json()
    assert payload["network"] == "development" and payload["real_value"] is False
    return response.status_code, payload


async def _state(served: Served, escrow: str | None = None) -> dict[str, Any]:
    client = served.clients["stranger"]
    out: dict[str, Any] = {w: await client.balance(w) for w in (RENTER, PROVIDER, STRANGER)}
    stats = await client.stats()
    out["supply"] = stats["supply"]
    out["total"] = stats["total_balances"]
    if escrow is not None:
        out["escrow"] = await client.fetch(escrow)
    return out


async def _opened(served: Served) -> EscrowHandle:
    renter = served.clients["renter"]
    await renter.set_time(T0)
    await renter.faucet(10_000_000)
    receipt = await renter.open(1, PROVIDER, 1000, 60, T0 + 300)
    return receipt.escrow


async def test_info_says_no_real_value(tmp_path: Path) -> None:
    async with served_ledger(ledger_config(tmp_path)) as served:
        info = await served.clients["renter"].info()
        assert info["network"] == "development" and info["real_value"] is False
        assert "no real value" in info["notice"]
        mint = await served.clients["renter"].mint_info()
        assert mint.decimals == 6 and mint.address == info["mint"]


async def test_forged_signature_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async with served_ledger(ledger_config(tmp_path)) as served:
        handle = await _opened(served)
        before = await _state(served, handle.address)
        ledger_id = (await served.clients["renter"].info())["ledger_id"]
        # The stranger signs a close but claims to be the renter.
        envelope = json.loads(_sealed(CloseRequest(ledger=ledger_id, escrow=handle.address), KEYS["stranger"]))
        envelope["signer"] = RENTER
        status, body = await _post(served, canonical_bytes(envelope))
        assert status == 401 and body["error"]["code"] == "bad_signature"
        assert await _state(served, handle.address) == before


async def test_replayed_request_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async with served_ledger(ledger_config(tmp_path)) as served:
        handle = await _opened(served)
        ledger_id = (await served.clients["renter"].info())["ledger_id"]
        data = _sealed(StartRequest(ledger=ledger_id, escrow=handle.address), KEYS["provider"])
        status, body = await _post(served, data)
        assert status == 200 and body["action"] == "start"
        before = await _state(served, handle.address)
        status, body = await _post(served, data)
        assert status == 409 and body["error"]["code"] == "replay"
        assert await _state(served, handle.address) == before


async def test_out_of_order_requests(tmp_path: Path) -> None:
    async with served_ledger(ledger_config(tmp_path)) as served:
        provider, renter = served.clients["provider"], served.clients["renter"]
        ghost = EscrowHandle("development", escrow_address(RENTER, PROVIDER, 9), RENTER, PROVIDER, 9)
        with pytest.raises(EscrowNotFound):
            await provider.start(ghost)  # start before open
        handle = await _opened(served)
        with pytest.raises(EscrowRefused) as caught:
            await provider.claim(handle)  # claim before start
        assert caught.value.code is EscrowErrorCode.NOT_STARTED
        assert await renter.settlement(handle) is None  # open
        await renter.close(handle)
        settled = await provider.settlement(handle)  # the closed escrow's totals, kept by this ledger
        view = await renter.fetch(handle.address)
        assert settled is not None and settled.charged == 0 and settled.refunded == settled.deposited == view.deposited
        before = await _state(served, handle.address)
        for call in (provider.start, provider.claim, renter.close, renter.refund_unstarted):
            with pytest.raises(EscrowRefused) as caught:
                await call(handle)
            assert caught.value.code is EscrowErrorCode.ESCROW_CLOSED
        assert await _state(served, handle.address) == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "invalid_request"),
        (b"{}", 400, "invalid_request"),
        (b"[1, 2, 3]", 400, "invalid_request"),
        (b"{" + b'"a":' * 10 + b"1}", 400, "invalid_request"),
        (b" " * 5000, 413, "payload_too_large"),
    ],
)
async def test_malformed_and_oversized_bodies(tmp_path: Path, body: bytes, status: int, code: str) -> None:
    async with served_ledger(ledger_config(tmp_path)) as served:
        before = await _state(served)
        got, payload = await _post(served, body)
        assert (got, payload["error"]["code"], payload["error"]["kind"]) == (status, code, "request")
        assert await _state(served) == before


async def test_schema_expiry_and_ledger_checks(tmp_path: Path) -> None:
    async with served_ledger(ledger_config(tmp_path)) as served:
        ledger_id = (await served.clients["renter"].info())["ledger_id"]
        key = KEYS["renter"]
        envelope = json.loads(_sealed(FaucetRequest(ledger=ledger_id, amount=5), key))
        envelope["payload"]["extra"] = 1  # extra field: schema refuses before the signature check
        cases = [
            (canonical_bytes(envelope), 400, "invalid_request"),
            (_sealed(FaucetRequest(ledger="another-ledger", amount=5), key), 400, "wrong_ledger"),
            (_sealed(FaucetRequest(ledger=ledger_id, amount=5), key, issued=int(time.time()) - 120), 401,
             "expired"),
            (_sealed(FaucetRequest(ledger=ledger_id, amount=5), key, ttl=301), 401, "expired"),
            (_sealed(FaucetRequest(ledger=ledger_id, amount=10**15), key), 400, "faucet_limit"),
        ]
        before = await _state(served)
        for body, status, code in cases:
            got, payload = await _post(served, body)
            assert (got, payload["error"]["code"]) == (status, code)
        assert await _state(served) == before


async def test_faucet_is_rate_limited_per_wallet(tmp_path: Path) -> None:
    async with served_ledger(ledger_config(tmp_path, faucet_interval_s=3600)) as served:
        assert await served.clients["renter"].faucet(1_000) == 1_000
        with pytest.raises(RequestRejected) as caught:
            await served.clients["renter"].faucet(1_000)
        assert caught.value.reason == "faucet_rate_limited"
        assert await served.clients["provider"].faucet(7) == 7
        assert await served.clients["renter"].balance(RENTER) == 1_000


async def test_clock_cannot_be_set_outside_test_mode(tmp_path: Path) -> None:
    async with served_ledger(ledger_config(tmp_path, test_mode=False)) as served:
        with pytest.raises(RequestRejected) as caught:
            await served.clients["renter"].set_time(T0)
        assert caught.value.reason == "not_test_mode"
        assert abs(await served.clients["renter"].now() - int(time.time())) < 60


async def test_unknown_escrow_and_bad_wallet(tmp_path: Path) -> None:
    async with served_ledger(ledger_config(tmp_path)) as served:
        with pytest.raises(EscrowNotFound):
            await served.clients["renter"].fetch(escrow_address(RENTER, PROVIDER, 1))
        with pytest.raises(RequestRejected):
            await served.clients["renter"].balance("0OIl" * 10)


async def test_state_and_replay_protection_survive_a_restart(tmp_path: Path) -> None:
    config = ledger_config(tmp_path)
    async with served_ledger(config) as served:
        handle = await _opened(served)
        await served.clients["renter"].set_time(T0 + 10)
        await served.clients["provider"].start(handle)
        await served.clients["renter"].set_time(T0 + 10 + 180)
        ledger_id = (await served.clients["renter"].info())["ledger_id"]
        claim = _sealed(ClaimRequest(ledger=ledger_id, escrow=handle.address), KEYS["provider"])
        status, body = await _post(served, claim)
        assert status == 200 and body["paid"] + body["fee"] == 3 * 1000
        before = await _state(served, handle.address)
    async with served_ledger(config) as served:
        await served.clients["renter"].set_time(T0 + 10 + 180)
        assert await _state(served, handle.address) == before
        status, body = await _post(served, claim)
        assert status == 409 and body["error"]["code"] == "replay"
        await served.clients["renter"].set_time(T0 + 10 + 240)
        receipt = await served.clients["provider"].claim(handle)
        assert receipt.paid + receipt.fee == 1000
        served.ledger.audit()


async def test_fresh_wallets_cannot_drain_the_faucet_from_one_address(tmp_path: Path) -> None:
    # the attack: many fresh wallets, one faucet request each, from one address
    config = ledger_config(tmp_path, faucet_interval_s=3600, faucet_max=1_000)
    async with served_ledger(config) as served:
        ledger_id = config.ledger_id
        granted = 0
        for _ in range(30):
            status, body = await _post(served, _sealed(FaucetRequest(ledger=ledger_id, amount=1_000),
                                                       SigningKey(os.urandom(32))))
            if status != 200:
                assert (status, body["error"]["code"]) == (429, "faucet_rate_limited")
                assert "hourly budget" in body["error"]["message"]
                break
            granted += 1_000
        assert granted == 10 * 1_000  # the per-address budget, not 30 x faucet_max


def test_the_faucet_budget_has_a_global_bound_and_refills() -> None:
    from dgpu.contracts.devledger.server import FaucetBudget

    now = [0.0]
    budget = FaucetBudget(per_address_per_hour=50, global_per_hour=100, clock=lambda: now[0])
    for i in range(10):  # ten addresses, 10 each: the global budget is spent
        budget.take(f"10.0.0.{i}", 10)
    with pytest.raises(RequestRejected, match="all addresses"):
        budget.take("10.0.0.99", 1)
    now[0] += 360  # a tenth of an hour refills a tenth
    budget.take("10.0.0.99", 10)
    with pytest.raises(RequestRejected):
        budget.take("10.0.0.98", 1)
