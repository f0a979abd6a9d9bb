"""The node's local HTTP API through real uvicorn servers on 127.0.0.1, driven with httpx.

The job backend is ``InProcessJobDouble`` (a test double, no network) here; the real backend
runs in ``tests/integration/api``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dgpu.bootstrap.auth import TokenIssuer
from dgpu.bootstrap.storage import cid_of
from dgpu.node.ports.gpu import simulated_gpus
from dgpu.node.services import api as svc
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.publisher import OfferPublisher, OfferTerms
from dgpu.protocol.auth import Role
from dgpu.protocol.messages import Executor, GpuSpec, Offer

from .test_http_api_harness import MINT, Stack, api_stack, login, make_offer, new_key


def err(r: Any) -> tuple[int, str]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return r.status_code, body["error"]["code"]


async def wait_state(stack: Stack, job_id: str, *states: str) -> dict[str, Any]:
    with trio.fail_after(20):
        while True:
            r = await stack.api.get(f"/api/v1/jobs/{job_id}", headers=stack.owner_headers)
            assert r.status_code == 200, r.text
            if r.json()["state"] in states:
                body: dict[str, Any] = r.json()
                return body
            await trio.sleep(0.02)


# -- auth ----------------------------------------------------------------------------------------


async def test_auth_refusals_are_structured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with api_stack(tmp_path) as s:
        url = "/api/v1/billing/marketplace"
        assert err(await s.api.get(url)) == (401, "no_token")
        assert err(await s.api.get(url, headers={"authorization": "Basic abc"})) == (401, "no_token")
        # forged: right kid and claims, signed by another key
        forger = TokenIssuer(Ed25519PrivateKey.generate(), "dgpu-bootstrap", "dgpu", 900)
        forger.kid = s.issuer().kid
        forged = forger.issue(s.node_key.public_key.wallet, Role.RENTER, "f", s.clock())[0]
        r = await s.api.get(url, headers=s.auth(forged))
        assert err(r) == (401, "invalid_token")
        assert forged not in r.text
        # a genuine token for another wallet
        other = s.mint_token(new_key().public_key.wallet)
        assert err(await s.api.get(url, headers=s.auth(other))) == (403, "not_owner")
        # expired
        old = s.mint_token(s.node_key.public_key.wallet, ttl=60)
        s.clock.now += 120
        assert err(await s.api.get(url, headers=s.auth(old))) == (401, "token_expired")
        # garbage
        assert err(await s.api.get(url, headers=s.auth("x.y.z"))) == (401, "invalid_token")
        # the owner gets in; a network admin's token (role admin, any wallet) does not
        assert (await s.api.get(url, headers=s.owner_headers)).status_code == 200
        admin = s.mint_token(s.admin.public_key.wallet, Role.ADMIN)
        assert err(await s.api.get(url, headers=s.auth(admin))) == (403, "not_owner")
        stranger_admin = s.mint_token(new_key().public_key.wallet, Role.ADMIN)
        assert err(await s.api.get(url, headers=s.auth(stranger_admin))) == (403, "not_owner")
    assert forged not in caplog.text and other not in caplog.text


async def test_login_through_the_node_proxy_gives_a_token_the_node_accepts(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        pair = await login(s.api, s.node_key)  # challenge/register/login all via the node
        assert pair["wallet"] == s.node_key.public_key.wallet
        ok = await s.api.get("/api/v1/jobs", headers=s.auth(pair["access_token"]))
        assert ok.status_code == 200
        r = await s.api.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 200 and r.json()["access_token"] != pair["access_token"]
        # reusing the rotated refresh token: the bootstrap's refusal passes through as is
        again = await s.api.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert err(again) == (401, "refresh_reused")
        # another wallet can log in at the bootstrap through the proxy, but the node refuses it
        stranger = await login(s.api, new_key())
        assert err(await s.api.get("/api/v1/jobs", headers=s.auth(stranger["access_token"]))) == (403, "not_owner")
        assert err(await s.api.post("/api/v1/auth/challenge", json={"wallet": "nope"})) == (400, "bad_wallet")


async def test_a_logged_out_token_is_refused_by_the_node_within_the_check_interval(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        pair = await login(s.api, s.node_key)
        headers = s.auth(pair["access_token"])
        assert (await s.api.get("/api/v1/jobs", headers=headers)).status_code == 200
        r = await s.boot.post("/api/v1/auth/logout", json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 204
        # the token is still far from expiry; past the check interval the node asks again
        s.clock.now += s.ctx.settings.revocation_check_s + 1
        assert err(await s.api.get("/api/v1/jobs", headers=headers)) == (401, "token_revoked")
        s.clock.now += 3600  # a revocation is final, whatever the clock says later
        assert err(await s.api.get("/api/v1/jobs", headers=headers)) in {(401, "token_revoked"),
                                                                          (401, "token_expired")}


# -- marketplace ---------------------------------------------------------------------------------


def fill(s: Stack) -> dict[str, Offer]:
    now = int(s.clock())
    specs = {
        "a": dict(price=300, model="RTX 4090", vram=24_576, region="eu"),
        "b": dict(price=100, model="RTX 4080", vram=16_384, region="us"),
        "c": dict(price=200, model="A100", vram=81_920, region="eu", count=4),
        "d": dict(price=50, model="RTX 4090", vram=24_576, region="eu", simulated=True),
        "e": dict(price=200, model="H100", vram=81_920, region="us", executors=(Executor.SCRIPT,)),
    }
    offers = {}
    for name, kw in specs.items():
        offer = make_offer(new_key(), now=now, **kw)  # type: ignore[arg-type]
        s.book.put(offer, f"peer-{name}", now=now)
        offers[name] = offer
    return offers


async def test_marketplace_filters_sorting_and_pagination(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        o = fill(s)
        by_provider = {v.provider: k for k, v in o.items()}

        async def names(**params: Any) -> list[str]:
            r = await s.api.get("/api/v1/billing/marketplace", params=params, headers=s.owner_headers)
            assert r.status_code == 200, r.text
            return [by_provider[x["provider"]] for x in r.json()["offers"]]

        ce = sorted(["c", "e"], key=lambda n: o[n].provider)  # same price and VRAM: by provider
        assert await names() == ["b", *ce, "a"]  # cheapest first
        assert set(await names(include_simulated=True)) == {"a", "b", "c", "d", "e"}
        assert (await names(include_simulated=True))[0] == "d"
        assert await names(gpu_model="rtx 4090") == ["a"]
        assert await names(min_vram_mib=30_000) == ce
        assert await names(gpu_count=2) == ["c"]
        assert await names(region="us") == ["b", "e"]
        assert await names(max_price=200) == ["b", *ce]
        assert await names(max_price=199) == ["b"]
        assert await names(executor="script") == ["e"]
        assert await names(sort="-price") == ["a", *ce, "b"]
        vram = await names(sort="vram")
        assert vram[:2] == ["b", "a"] and set(vram[2:]) == {"c", "e"}
        assert (await names(sort="-vram"))[-1] == "b"
        r = await s.api.get("/api/v1/billing/marketplace", params={"limit": 2, "offset": 1},
                            headers=s.owner_headers)
        body = r.json()
        assert body["total"] == 4 and body["limit"] == 2 and body["offset"] == 1
        assert [by_provider[x["provider"]] for x in body["offers"]] == (await names())[1:3]
        row = body["offers"][0]
        assert isinstance(row["price_per_gpu_minute"], int) and row["peer_id"].startswith("peer-")
        too_many = await s.api.get("/api/v1/billing/marketplace", params={"limit": 201}, headers=s.owner_headers)
        assert err(too_many) == (422, "invalid_request")
        bad = await s.api.get("/api/v1/billing/marketplace", params={"sort": "name"}, headers=s.owner_headers)
        assert err(bad) == (422, "invalid_request")


async def test_ties_in_price_are_broken_by_vram_then_provider(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        o = fill(s)
        r = await s.api.get("/api/v1/billing/marketplace", params={"max_price": 200, "min_vram_mib": 30_000},
                            headers=s.owner_headers)
        got = [x["provider"] for x in r.json()["offers"]]
        assert got == sorted([o["c"].provider, o["e"].provider])  # same price, same VRAM


# -- pricing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    # (0.50 + 24 GiB x 0.02 + 450 W x 0.001) x 1.5 = 2.145 dGPU/h -> 2_145_000 / 60 = 35_750 per minute
    ({"gpu_model": "RTX 4090", "vram_mib": 24_576, "power_limit_w": 450, "minutes": 60, "multiplier": "1.5"},
     {"hourly_price_per_gpu": "2.14500", "rate_per_minute": 35_750, "total": 2_145_000, "fee": 107_250,
      "provider_net": 2_037_750}),
    # two GPUs: the rate doubles
    ({"gpu_model": "RTX 4090", "vram_mib": 24_576, "power_limit_w": 450, "minutes": 60, "multiplier": "1.5",
      "gpu_count": 2},
     {"rate_per_minute": 71_500, "total": 4_290_000, "fee": 214_500, "provider_net": 4_075_500}),
    # unknown model: 0.25 + 1000/1024 x 0.02 = 0.26953125/h -> 4492.1875 -> 4493 (rounded up);
    # 7 minutes = 31_451; fee floor(1572.55) = 1572
    ({"gpu_model": "Mystery", "vram_mib": 1000, "minutes": 7},
     {"rate_per_minute": 4_493, "total": 31_451, "fee": 1_572, "provider_net": 29_879}),
    # the multiplier is clamped to 2.0: (0.40 + 16 x 0.02) x 2 = 1.44/h -> 24_000 per minute
    ({"gpu_model": "RTX 4080", "vram_mib": 16_384, "minutes": 1, "multiplier": "9"},
     {"rate_per_minute": 24_000, "total": 24_000, "fee": 1_200, "provider_net": 22_800}),
])
async def test_estimate_numbers_checked_by_hand(tmp_path: Path, body: dict[str, Any],
                                                expected: dict[str, Any]) -> None:
    async with api_stack(tmp_path) as s:
        r = await s.api.post("/api/v1/billing/pricing/estimate", json=body, headers=s.owner_headers)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["decimals"] == 6  # read from the ledger
        for k, v in expected.items():
            if k == "hourly_price_per_gpu":
                from decimal import Decimal

                assert Decimal(got[k]) == Decimal(v)
            else:
                assert got[k] == v and isinstance(got[k], int), (k, got[k])
        bad = await s.api.post("/api/v1/billing/pricing/estimate", json={**body, "multiplier": "1e3"},
                               headers=s.owner_headers)
        assert err(bad) == (422, "invalid_request")


# -- jobs ----------------------------------------------------------------------------------------


async def test_job_lifecycle_status_logs_cancel(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        h = s.owner_headers
        r = await s.api.post("/api/v1/jobs", json={"script": "one\ntwo\nthree", "max_minutes": 10}, headers=h)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/api/v1/jobs/{job_id}"
        st = await wait_state(s, job_id, "running")
        assert st["rate_per_minute"] == 1_000 and st["executor"] == "script"
        logs = (await s.api.get(f"/api/v1/jobs/{job_id}/logs", headers=h)).json()
        assert [x["line"] for x in logs["lines"]] == ["one", "two", "three"] and logs["next_seq"] == 3
        since = (await s.api.get(f"/api/v1/jobs/{job_id}/logs", params={"since": 1, "limit": 1}, headers=h)).json()
        assert [x["line"] for x in since["lines"]] == ["two"]
        listed = (await s.api.get("/api/v1/jobs", headers=h)).json()
        assert listed["total"] == 1 and listed["jobs"][0]["id"] == job_id
        r = await s.api.delete(f"/api/v1/jobs/{job_id}", headers=h)
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        end = await wait_state(s, job_id, "cancelled")
        assert (end["paid"], end["fee"], end["refunded"], end["minutes"]) == (950, 50, 9_000, 1)
        assert end["paid"] + end["fee"] + end["refunded"] == 10 * 1_000  # the whole deposit accounted
        assert err(await s.api.delete(f"/api/v1/jobs/{job_id}", headers=h)) == (409, "job_ended")
        assert err(await s.api.get("/api/v1/jobs/nope", headers=h)) == (404, "not_found")
        assert err(await s.api.get("/api/v1/jobs/nope/logs", headers=h)) == (404, "not_found")
        only = (await s.api.get("/api/v1/jobs", params={"state": "running"}, headers=h)).json()
        assert only["total"] == 0


async def test_jobs_are_bounded_and_finish(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        h = s.owner_headers
        ids = []
        for _ in range(2):
            r = await s.api.post("/api/v1/jobs", json={"image": "busybox", "command": ["true"]}, headers=h)
            assert r.status_code == 202
            ids.append(r.json()["id"])
        third = await s.api.post("/api/v1/jobs", json={"script": "x"}, headers=h)
        assert err(third) == (429, "too_many_jobs")
        s.double.release.set()
        for job_id in ids:
            end = await wait_state(s, job_id, "finished")
            assert (end["exit_code"], end["minutes"], end["paid"], end["fee"]) == (0, 2, 1900, 100)
            assert end["spent"] == 2000
        # slots are free again
        r = await s.api.post("/api/v1/jobs", json={"script": "x", "provider": "1" * 32}, headers=h)
        assert r.status_code == 202
        failed = await wait_state(s, r.json()["id"], "failed")
        assert failed["error_code"] == "no_offers"


async def test_a_node_without_a_ledger_refuses_jobs(tmp_path: Path) -> None:
    async with api_stack(tmp_path, job_backend=False) as s:
        h = s.owner_headers
        r = await s.api.post("/api/v1/jobs", json={"script": "echo hi", "max_minutes": 2}, headers=h)
        assert err(r) == (503, "no_ledger")
        assert "ledger" in r.json()["error"]["message"]
        assert (await s.api.get("/api/v1/jobs", headers=h)).json()["total"] == 0  # nothing was recorded
        assert s.double.started == []


@pytest.mark.parametrize("body", [
    {"script": "x", "image": "y"}, {}, {"script": "x", "max_minutes": 0}, {"script": "x", "surprise": 1},
    {"script": "x", "command": ["no"]}, {"image": "i", "gpu_count": 65},
])
async def test_invalid_job_specs_are_422(tmp_path: Path, body: dict[str, Any]) -> None:
    async with api_stack(tmp_path) as s:
        assert err(await s.api.post("/api/v1/jobs", json=body, headers=s.owner_headers)) == (422, "invalid_request")
        assert s.double.started == []


async def test_oversized_bodies_are_refused(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        r = await s.api.post("/api/v1/jobs", content=b"{" + b" " * 300_000 + b"}",
                             headers={**s.owner_headers, "content-type": "application/json"})
        assert err(r) == (413, "too_large")


# -- billing -------------------------------------------------------------------------------------


async def test_wallet_balance_faucet_and_withdraw_on_the_development_ledger(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        h = s.owner_headers
        me = s.node_key.public_key.wallet
        w = (await s.api.get("/api/v1/billing/wallet", headers=h)).json()
        assert (w["address"], w["balance"], w["decimals"], w["real_value"], w["ledger"]) == (
            me, 0, 6, False, "development")
        d = await s.api.post(f"/api/v1/billing/wallet/{me}/deposit", json={"amount": 2_500_000}, headers=h)
        assert d.status_code == 200, d.text
        assert (d.json()["credited"], d.json()["balance"], d.json()["real_value"]) == (2_500_000, 2_500_000, False)
        b = (await s.api.get(f"/api/v1/billing/wallet/{me}/balance", headers=h)).json()
        assert (b["balance"], b["balance_display"]) == (2_500_000, "2.500000")
        assert await s.ledger.balance(me) == 2_500_000  # really on the ledger
        other = new_key().public_key.wallet
        assert (await s.api.get(f"/api/v1/billing/wallet/{other}/balance", headers=h)).json()["balance"] == 0
        assert err(await s.api.post(f"/api/v1/billing/wallet/{other}/deposit", json={"amount": 1},
                                    headers=h)) == (403, "not_own_wallet")
        too_much = await s.api.post(f"/api/v1/billing/wallet/{me}/deposit", json={"amount": 10**12}, headers=h)
        assert err(too_much)[0] == 409  # the faucet's own limit, refused by the ledger
        wd = await s.api.post(f"/api/v1/billing/wallet/{me}/withdraw", json={"to": other, "amount": 500_000},
                              headers=h)
        assert wd.status_code == 200, wd.text
        assert (wd.json()["amount"], wd.json()["balance"]) == (500_000, 2_000_000)
        assert await s.ledger.balance(me) == 2_000_000 and await s.ledger.balance(other) == 500_000
        over = await s.api.post(f"/api/v1/billing/wallet/{me}/withdraw", json={"to": other, "amount": 10**9},
                                headers=h)
        assert err(over)[0] == 409  # more than the wallet holds: refused by the ledger, nothing moved
        assert await s.ledger.balance(me) == 2_000_000


# -- providers -----------------------------------------------------------------------------------


def publisher(sent: list[bytes]) -> OfferPublisher:
    key = new_key()
    owner = key.public_key.wallet
    gpus = simulated_gpus([GpuSpec(model="RTX 4090", vram_mib=24_576, simulated=True)], owner=owner)
    inventory = Inventory(gpus, owner=owner, price_per_gpu_minute=8_334, max_jobs=1, clock=lambda: int(time.time()))

    async def publish(data: bytes) -> None:
        sent.append(data)

    return OfferPublisher(key, inventory, OfferTerms(mint=MINT, ledger="dev", region="local"), publish,
                          clock=lambda: int(time.time()), clock_ms=lambda: time.time_ns() // 1_000_000)


async def test_provider_profile_pause_and_resume(tmp_path: Path) -> None:
    sent: list[bytes] = []
    pub = publisher(sent)
    control = svc.ProviderControl(pub, development=True)
    async with api_stack(tmp_path, providers=control) as s:
        s.ctx.owner = pub.key.public_key.wallet  # the node's wallet is the provider's
        h = s.auth(s.mint_token(pub.key.public_key.wallet))
        fill(s)
        r = await s.api.post("/api/v1/providers", headers=h, json={
            "price_per_gpu_minute": 9_000, "region": "eu-west",
            "gpus": [{"model": "H100", "vram_mib": 81_920, "count": 2, "simulated": True}]})
        assert r.status_code == 200, r.text
        assert (r.json()["price_per_gpu_minute"], r.json()["region"], r.json()["gpu_count"]) == (9_000, "eu-west", 2)
        offer = await pub.publish_now()
        assert (offer.price_per_minute, offer.region, offer.gpus[0].model) == (9_000, "eu-west", "H100")
        assert len(sent) == 1
        listed = (await s.api.get("/api/v1/providers", headers=h)).json()["providers"]
        assert listed[0]["own"] is True and listed[0]["price_per_gpu_minute"] == 9_000
        assert len(listed) == 6  # itself + the five in the book (simulated included)
        me = pub.key.public_key.wallet
        r = await s.api.put(f"/api/v1/providers/{me}/status", json={"status": "paused"}, headers=h)
        assert r.json() == {"provider": me, "status": "paused"}
        await pub.publish_now()
        assert len(sent) == 1  # paused: nothing goes out
        await s.api.put(f"/api/v1/providers/{me}/status", json={"status": "active"}, headers=h)
        await pub.publish_now()
        assert len(sent) == 2
        other = new_key().public_key.wallet
        assert err(await s.api.put(f"/api/v1/providers/{other}/status", json={"status": "paused"},
                                   headers=h)) == (404, "not_found")
        real = await s.api.post("/api/v1/providers", headers=h,
                                json={"gpus": [{"model": "H100", "vram_mib": 81_920}]})
        assert err(real) == (403, "real_gpus_from_inventory")


async def test_simulated_gpus_only_on_development_networks_and_renters_are_not_providers(tmp_path: Path) -> None:
    pub = publisher([])
    control = svc.ProviderControl(pub, development=False)
    async with api_stack(tmp_path, providers=control, development=False) as s:
        s.ctx.owner = pub.key.public_key.wallet
        h = s.auth(s.mint_token(pub.key.public_key.wallet))
        r = await s.api.post("/api/v1/providers", headers=h,
                             json={"gpus": [{"model": "H100", "vram_mib": 81_920, "simulated": True}]})
        assert err(r) == (403, "simulated_not_allowed")
    async with api_stack(tmp_path / "renter") as s:
        assert err(await s.api.post("/api/v1/providers", json={"region": "x"},
                                    headers=s.owner_headers)) == (409, "not_a_provider")


# -- storage -------------------------------------------------------------------------------------


async def test_storage_round_trip_through_the_bootstrap_with_the_node_token(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        h = s.owner_headers
        unregistered = await s.api.put("/api/v1/storage/data/a.bin", content=b"x", headers=h)
        assert err(unregistered) == (403, "not_registered")  # the bootstrap's answer, passed on
        await login(s.boot, s.node_key)  # the node's wallet registers a role once
        blob = bytes(range(256)) * 4096  # 1 MiB
        r = await s.api.put("/api/v1/storage/data/dir/a.bin", content=blob, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["size"] == len(blob)
        got = await s.api.get("/api/v1/storage/data/dir/a.bin", headers=h)
        assert got.status_code == 200 and got.content == blob
        assert (await s.api.delete("/api/v1/storage/data/dir/a.bin", headers=h)).status_code == 204
        assert err(await s.api.get("/api/v1/storage/data/dir/a.bin", headers=h)) == (404, "not_found")
        assert err(await s.api.get("/api/v1/storage/BAD!/k", headers=h)) == (400, "bad_bucket")
        assert err(await s.api.put("/api/v1/storage/data/k", content=b"x")) == (401, "no_token")


async def test_an_upload_link_through_the_node_api_stores_one_object_without_a_token(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        h = s.owner_headers
        await login(s.boot, s.node_key)
        r = await s.api.post("/api/v1/storage-links/results/job/r.tar?max_bytes=100&ttl_s=60", headers=h)
        assert r.status_code == 200, r.text
        link = r.json()
        assert link["max_bytes"] == 100 and "sig=" in link["url"]
        async with httpx.AsyncClient() as anyone:  # whoever holds the link: no token
            put = await anyone.put(link["url"], content=b"the result", headers={"x-dgpu-cid": cid_of(b"the result")})
        assert put.status_code == 200, put.text
        got = await s.api.get("/api/v1/storage/results/job/r.tar", headers=h)
        assert got.content == b"the result"
        assert err(await s.api.post("/api/v1/storage-links/results/k")) == (401, "no_token")


# -- metrics and docs ----------------------------------------------------------------------------


async def test_metrics_use_route_templates_and_openapi_is_served(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        h = s.owner_headers
        await s.api.get("/api/v1/jobs/abcdef123", headers=h)
        await s.api.get("/api/v1/billing/marketplace", headers=h)
        text = (await s.api.get("/metrics")).text
        assert 'dgpu_http_request_seconds_count{method="GET",route="/api/v1/jobs/{job_id}",status="404"} 1.0' in text
        assert "abcdef123" not in text
        assert 'route="/api/v1/billing/marketplace",status="200"' in text
        schema = (await s.api.get("/openapi.json")).json()
        for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/billing/marketplace",
                     "/api/v1/billing/pricing/estimate", "/api/v1/providers", "/api/v1/auth/login",
                     "/api/v1/storage/{bucket}/{key}", "/api/v1/billing/wallet/{wallet_id}/withdraw"):
            assert path in schema["paths"], path


async def test_job_inputs_come_only_from_the_input_roots(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    (root / "data.txt").write_text("ok")
    (root / "escape").symlink_to("/etc/passwd")
    (root / "sub").symlink_to(tmp_path)  # a folder link out of the root
    (tmp_path / "secret.txt").write_text("no")
    async with api_stack(tmp_path) as s:
        s.ctx.settings = s.ctx.settings.model_copy(update={"input_roots": (root.resolve(),)})
        for local in ("/etc/shadow", str(root / "escape"), str(root / "sub" / "secret.txt"),
                      str(root / ".." / "secret.txt")):
            r = await s.api.post("/api/v1/jobs", json={"script": "true", "inputs": {"x": local}},
                                 headers=s.owner_headers)
            assert err(r) == (403, "input_refused"), local
            assert "outside the input roots" in r.json()["error"]["message"]
        r = await s.api.post("/api/v1/jobs", json={"script": "true", "inputs": {"x": str(root / "data.txt")}},
                             headers=s.owner_headers)
        assert r.status_code == 202, r.text


def test_the_renter_resolves_inputs_against_its_roots(tmp_path: Path) -> None:
    from dgpu.node.services.renter import InputRefused, resolve_input
    from dgpu.node.services.renter.inputs import resolve_roots

    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "link").symlink_to("/etc/hostname")
    roots = resolve_roots([tmp_path])
    assert resolve_input(tmp_path / "a.txt", roots) == (tmp_path / "a.txt").resolve()
    for bad in ("/etc/shadow", tmp_path / "link"):
        with pytest.raises(InputRefused, match="outside the input roots"):
            resolve_input(bad, roots)
    with pytest.raises(InputRefused, match="not a regular file"):
        resolve_input(tmp_path / "missing.txt", roots)


async def test_rebound_host_names_and_cross_site_writes_are_refused(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        port = s.api_url.rsplit(":", 1)[1]
        # a page on a domain rebound to 127.0.0.1: its requests carry its own Host
        for path in ("/metrics", "/docs", "/openapi.json", "/healthz"):
            r = await s.api.get(path, headers={"host": f"evil.example:{port}"})
            assert err(r) == (403, "bad_host"), path
        r = await s.api.post("/api/v1/auth/challenge", headers={"host": "evil.example"},
                             json={"wallet": s.node_key.public_key.wallet, "action": "login"})
        assert err(r) == (403, "bad_host")
        for name in ("localhost", "127.0.0.1", "[::1]"):
            ok = await s.api.get("/healthz", headers={"host": f"{name}:{port}"})
            assert ok.status_code == 200 and ok.headers["x-content-type-options"] == "nosniff"
        # a page on another origin posting to the real localhost (a simple request, no preflight)
        body = {"wallet": s.node_key.public_key.wallet, "action": "login"}
        for headers in ({"origin": "http://evil.example"}, {"origin": "null"},
                        {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"}):
            r = await s.api.post("/api/v1/auth/challenge", json=body, headers=headers)
            assert err(r) == (403, "cross_origin"), headers
        # the same origin, and clients that are not browsers, still work; reads are not state changes
        same = {"origin": f"http://127.0.0.1:{port}", "sec-fetch-site": "same-origin"}
        assert (await s.api.post("/api/v1/auth/challenge", json=body, headers=same)).status_code == 200
        assert (await s.api.post("/api/v1/auth/challenge", json=body)).status_code == 200
        r = await s.api.get("/healthz", headers={"origin": "http://evil.example", "sec-fetch-site": "cross-site"})
        assert r.status_code == 200


def test_configured_host_names_are_answered() -> None:
    from dgpu.node.adapters.http_api.hosts import HostGuardMiddleware, host_name

    assert host_name("Node.LAN:8700") == "node.lan" and host_name("[::1]:1") == "::1"
    guard = HostGuardMiddleware(lambda *a: None, allowed=["node.lan"])  # type: ignore[arg-type]
    assert guard._refusal("GET", {"host": "node.lan:8700"}) is None
    assert guard._refusal("GET", {"host": "other.lan"}) is not None


async def test_a_log_flood_that_dropped_lines_says_so_in_the_final_status(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:  # the harness keeps 100 lines per job
        h = s.owner_headers
        quiet = (await s.api.post("/api/v1/jobs", json={"script": "a\nb"}, headers=h)).json()["id"]
        flood = (await s.api.post("/api/v1/jobs", json={"script": "\n".join(f"l{i}" for i in range(350))},
                                  headers=h)).json()["id"]
        await wait_state(s, flood, "running")
        s.double.release.set()
        done = await wait_state(s, flood, "finished")
        assert "250 log lines were dropped unread" in done["reason"], done["reason"]
        assert "dropped" not in (await wait_state(s, quiet, "finished"))["reason"]
