"""End to end: a real local network (bootstrap + provider OS processes on 127.0.0.1, as in
``dgpu demo``) and a renter node in this process serving the local API; a job submitted through
``POST /api/v1/jobs`` runs on a provider and its logs come back through the API.

The job is paid for: the bootstrap node serves the development ledger, the providers verify and
bill escrows on it (``--ledger-url``), and the API node (``ledger_url`` set) funds its wallet
from the faucet through the API, opens the escrow for the quote before accepting, and reports
the escrow's final accounting, which is checked against the ledger itself.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dgpu.bootstrap.config import BootstrapHttpConfig
from dgpu.bootstrap.http_app import create_app
from dgpu.client.demo import DemoNetwork
from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.adapters.http_api import serve_node_api
from dgpu.node.adapters.http_server import serve_http
from dgpu.node.app import NodeRuntime, api_node, run_node
from dgpu.node.config import NodeConfig
from dgpu.node.services.api import ApiSettings
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.keys import b58encode

pytestmark = pytest.mark.integration


async def login(api: httpx.AsyncClient, rt: NodeRuntime) -> str:
    wallet = rt.key.public_key.wallet
    for action in ("register", "login"):
        body: dict[str, Any] = {"wallet": wallet, "action": action}
        if action == "register":
            body["role"] = "renter"
        ch = (await api.post("/api/v1/auth/challenge", json=body)).json()
        sig = b58encode(rt.key.sign(bytes.fromhex(ch["signing_bytes_hex"])))
        r = await api.post(f"/api/v1/auth/{action}", json={"wallet": wallet, "nonce": ch["nonce"], "signature": sig})
        assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def test_job_submitted_through_the_api_runs_on_a_real_provider() -> None:
    # like `dgpu demo`: a fresh folder under /tmp, traversable (not listable) because a root
    # provider runs script jobs as nobody under it (pytest's tmp_path is not searchable by others)
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-api-e2e-"))
    os.chmod(workdir, 0o711)
    net = DemoNetwork(workdir)
    try:
        deadline = time.monotonic() + 30
        boot_addr = await trio.to_thread.run_sync(net.start_bootstrap, deadline)
        await trio.to_thread.run_sync(net.start_provider, "provider-a", "RTX 4090:24576:1", 8_334, deadline)
        await trio.to_thread.run_sync(net.start_provider, "provider-b", "RTX 4080:16384:1", 6_667, deadline)
        boot_http = create_app(BootstrapHttpConfig(data_dir=workdir / "bootstrap-http"),
                               node_key=Ed25519PrivateKey.generate())
        config = NodeConfig(role="renter", bootstrap=(boot_addr,), data_dir=workdir / "renter", accept_simulated=True)
        async with trio.open_nursery() as nursery:
            boot_port = await nursery.start(serve_http, boot_http, "127.0.0.1", 0)
            rt: NodeRuntime = await nursery.start(run_node, config)
            settings = ApiSettings(port=0, bootstrap_url=f"http://127.0.0.1:{boot_port}", development=True,
                                   ledger_url=net.ledger_url)
            port = await nursery.start(serve_node_api, api_node(rt), settings)
            wallet = rt.key.public_key.wallet
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
                token = await login(api, rt)
                h = {"authorization": f"Bearer {token}"}
                r = await api.post(f"/api/v1/billing/wallet/{wallet}/deposit", json={"amount": 1_000_000}, headers=h)
                assert r.status_code == 200 and r.json()["credited"] == 1_000_000, r.text
                with trio.fail_after(30):  # gossip: both offers reach the renter's book
                    while (await api.get("/api/v1/billing/marketplace", params={"include_simulated": True},
                                         headers=h)).json()["total"] < 2:
                        await trio.sleep(0.2)
                marker = secrets.token_hex(4)
                r = await api.post("/api/v1/jobs", headers=h, json={
                    "script": f'echo "e2e {marker}"\necho "on $(uname -n)" >&2\n', "max_minutes": 2,
                    "min_vram_mib": 16_000})
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                with trio.fail_after(60):
                    while True:
                        job = (await api.get(f"/api/v1/jobs/{job_id}", headers=h)).json()
                        if job["state"] not in ("pending", "running"):
                            break
                        await trio.sleep(0.2)
                assert (job["state"], job["exit_code"]) == ("finished", 0), job
                cheapest = (await api.get("/api/v1/billing/marketplace", params={"include_simulated": True},
                                          headers=h)).json()["offers"][0]
                assert job["provider"] == cheapest["provider"] and cheapest["gpus"][0]["model"] == "RTX 4080"
                assert job["rate_per_minute"] == 6_667
                # paid through a real escrow: the whole deposit is accounted for, on the ledger too
                deposit = 6_667 * 2
                assert job["escrow"] is not None
                assert job["paid"] + job["fee"] + job["refunded"] == deposit, job
                ledger = DevLedgerEscrow(net.ledger_url, rt.key)
                try:
                    view = await ledger.fetch(job["escrow"])
                    balance = await ledger.balance(wallet)
                finally:
                    await ledger.aclose()
                assert view.status is EscrowStatus.CLOSED and view.deposited == deposit
                assert (view.paid, view.fee_paid, view.refunded) == (job["paid"], job["fee"], job["refunded"])
                assert view.handle.renter == wallet and view.handle.provider == job["provider"]
                assert balance == 1_000_000 - job["paid"] - job["fee"]  # charged only what was used
                logs = (await api.get(f"/api/v1/jobs/{job_id}/logs", headers=h)).json()
                assert ("stdout", f"e2e {marker}") in [(x["stream"], x["line"]) for x in logs["lines"]]
                metrics = (await api.get("/metrics")).text
                assert "dgpu_offer_book_size 2.0" in metrics
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(net.stop)
    await trio.to_thread.run_sync(remove_tree, workdir)  # kept when the test failed, for the logs
