"""Shared harness of the local-API tests (no tests here): a real bootstrap HTTP server (auth,
storage, development ledger) and the node's API served by uvicorn on 127.0.0.1, both in the
test's own trio loop, driven with httpx.

``InProcessJobDouble`` is a test double of the job backend (the negotiation + escrow + job
stream path): it needs no network and lets a test decide when a job ends. The end-to-end test in
``tests/integration/api`` runs the real backend against real provider processes.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dgpu.bootstrap.auth import TokenIssuer
from dgpu.bootstrap.config import BootstrapHttpConfig, wallet_of
from dgpu.bootstrap.http_app import create_app
from dgpu.contracts.devledger import DevLedgerConfig, DevLedgerEscrow, ledger_router
from dgpu.node.adapters.http_api import ApiContext, create_node_api, fetch_verifier
from dgpu.node.adapters.http_server import serve_http
from dgpu.node.metrics import NodeMetrics
from dgpu.node.services import api as svc
from dgpu.node.services.blobs import pack_dir
from dgpu.node.services.offers import OfferBook
from dgpu.protocol.auth import Role
from dgpu.protocol.keys import SigningKey, b58encode
from dgpu.protocol.messages import Executor, GpuSpec, Offer

MINT = SigningKey(b"\x07" * 32).public_key.wallet


class Clock:
    """Wall-clock seconds, movable by the test (shared by the bootstrap app and the node API)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class InProcessJobDouble:
    """TEST DOUBLE of ``NetworkJobBackend``: no network. A job "agrees" at once, logs the lines
    of its script, then waits for ``release`` (finished) or a cancel request (cancelled)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.started: list[str] = []
        self.rate = 1_000
        #: when set, a finished job's "outputs" are this folder, packed as the provider would
        self.result_dir: Path | None = None

    async def run(self, spec: svc.JobSpec, job: svc.ApiJob) -> svc.JobFinal:
        if spec.provider == "1" * 32:
            raise svc.JobRunError("no offer matches this job", "no_offers")
        self.started.append(job.id)
        job.agreed(spec.provider or "Double1111111111111111111111111111", self.rate, escrow=None,
                   agreement_id="a" * 64)
        job.log("stdout", spec.script or "")
        with trio.move_on_after(60):  # a test never waits for this; it bounds a broken test
            async with trio.open_nursery() as nursery:
                async def on_cancel() -> None:
                    await job.cancel_requested.wait()
                    nursery.cancel_scope.cancel()

                async def on_release() -> None:
                    await self.release.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_cancel)
                nursery.start_soon(on_release)
        if job.cancel_requested.is_set():
            return svc.JobFinal(svc.ApiJobState.CANCELLED, None, "cancelled", minutes=1,
                                paid=950, fee=50, refunded=self.rate * (spec.max_minutes - 1))
        if self.result_dir is not None:
            archive = self.result_dir.parent / f"{job.id}.tar"
            await trio.to_thread.run_sync(pack_dir, self.result_dir, archive)
            job.result_file = archive
        return svc.JobFinal(svc.ApiJobState.FINISHED, 0, "exited", minutes=2, paid=1900, fee=100,
                            refunded=self.rate * (spec.max_minutes - 2))


def make_offer(key: SigningKey, *, price: int = 100, model: str = "RTX 4090", vram: int = 24_576,
               count: int = 1, region: str = "eu", simulated: bool = False, now: int,
               executors: tuple[Executor, ...] = (Executor.DOCKER,), seq: int = 1) -> Offer:
    return Offer(provider=key.public_key.wallet,
                 gpus=(GpuSpec(model=model, vram_mib=vram, count=count, simulated=simulated),),
                 price_per_minute=price, mint=MINT, ledger="dev", region=region, executors=executors,
                 seq=seq, issued_at=now, expires_at=now + 3000)


def new_key() -> SigningKey:
    return SigningKey(secrets.token_bytes(32))


@dataclass
class Stack:
    boot_url: str
    api_url: str
    api: httpx.AsyncClient
    boot: httpx.AsyncClient
    node_key: SigningKey
    boot_key: Ed25519PrivateKey
    admin: SigningKey
    clock: Clock
    book: OfferBook
    jobs: svc.JobManager
    double: InProcessJobDouble
    ctx: ApiContext
    ledger: DevLedgerEscrow
    tokens: dict[str, str] = field(default_factory=dict)
    #: cancelling it stops the bootstrap's HTTP server (auth and the development ledger)
    boot_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def issuer(self, ttl: int = 900) -> TokenIssuer:
        return TokenIssuer(self.boot_key, "dgpu-bootstrap", "dgpu", ttl)

    def mint_token(self, wallet: str, role: Role = Role.RENTER, ttl: int = 900) -> str:
        return self.issuer(ttl).issue(wallet, role, "fam", self.clock())[0]

    def auth(self, token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    @property
    def owner_headers(self) -> dict[str, str]:
        return self.auth(self.mint_token(self.node_key.public_key.wallet))


async def login(client: httpx.AsyncClient, key: SigningKey, *, role: str = "renter") -> dict[str, Any]:
    """The wallet flow through ``client`` (the node's proxy or the bootstrap): register, login."""
    wallet = key.public_key.wallet
    for action in ("register", "login"):
        body: dict[str, Any] = {"wallet": wallet, "action": action}
        if action == "register":
            body["role"] = role
        ch = (await client.post("/api/v1/auth/challenge", json=body)).json()
        sig = b58encode(key.sign(bytes.fromhex(ch["signing_bytes_hex"])))
        r = await client.post(f"/api/v1/auth/{action}",
                              json={"wallet": wallet, "nonce": ch["nonce"], "signature": sig})
        assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


@contextlib.asynccontextmanager
async def api_stack(tmp_path: Path, *, providers: svc.ProviderControl | None = None,
                    development: bool = True, now: float | None = None,
                    job_backend: bool = True) -> AsyncIterator[Stack]:
    """``job_backend=False``: the job manager has no backend, as on a node with no ledger."""
    import time

    clock = Clock(now if now is not None else time.time())
    boot_key = Ed25519PrivateKey.generate()
    admin = new_key()
    config = BootstrapHttpConfig(data_dir=tmp_path / "bootstrap", admin_wallets=frozenset({admin.public_key.wallet}),
                                 ip_burst=100_000, wallet_burst=100_000)
    assert wallet_of(boot_key)
    ledger_cfg = DevLedgerConfig(db_path=tmp_path / "ledger.sqlite", faucet_interval_s=0)
    boot_app = create_app(config, clock=clock, node_key=boot_key, extra_routers=[ledger_router(ledger_cfg)])
    node_key = new_key()
    book = OfferBook(capacity=20_000)
    double = InProcessJobDouble()
    boot_scope = trio.CancelScope()

    async def serve_boot(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with boot_scope:
            await serve_http(boot_app, "127.0.0.1", 0, task_status=task_status)

    async with trio.open_nursery() as nursery:
        boot_port: int = await nursery.start(serve_boot)
        boot_url = f"http://127.0.0.1:{boot_port}"
        settings = svc.ApiSettings(bootstrap_url=boot_url, development=development, max_active_jobs=2,
                                   max_job_records=50, log_lines=100)
        verifier = await fetch_verifier(boot_url)
        ledger = DevLedgerEscrow(boot_url, node_key)
        jobs = svc.JobManager(double if job_backend else None, max_active=settings.max_active_jobs,
                              max_records=settings.max_job_records, log_lines=settings.log_lines,
                              clock=lambda: int(clock()))
        ctx = ApiContext(settings=settings, owner=node_key.public_key.wallet, key=node_key, book=book,
                         verifier=verifier, jobs=jobs, wallet=svc.WalletService(ledger, node_key.public_key.wallet),
                         metrics=NodeMetrics(), providers=providers, clock=clock)
        await nursery.start(jobs.run)
        api_port = await nursery.start(serve_http, create_node_api(ctx), "127.0.0.1", 0)
        api_url = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as api, \
                httpx.AsyncClient(base_url=boot_url, timeout=30) as boot:
            yield Stack(boot_url, api_url, api, boot, node_key, boot_key, admin, clock, book, jobs,
                        double, ctx, ledger, boot_scope=boot_scope)
        await ledger.aclose()
        nursery.cancel_scope.cancel()
