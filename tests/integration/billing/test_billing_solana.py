"""Billing end to end on Solana: the escrow program on the local development endpoint
(``dgpu-local-rpc``, clock x60), a bootstrap node, a provider process run with ``--ledger solana``
and a renter (``dgpu.client`` with ``SolanaEscrow``) in the test process.

A settled escrow's account is closed on Solana, so conservation is read from the chain's token
accounts (renter, provider, treasury) and the program-wide audit (every escrow account of the
program, the settled ones gone with empty vaults).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from solana.rpc.async_api import AsyncClient
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from spl.token.instructions import get_associated_token_address

from dgpu.client import Client
from dgpu.client.client import RentalResult
from dgpu.client.demo import DemoNetwork
from dgpu.contracts.local_rpc import LocalRpc, LocalRpcInfo, LocalRpcUnavailable, build, fund
from dgpu.contracts.solana_audit import audit_escrows
from dgpu.contracts.solana_escrow import SolanaEscrow
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.adapters.keystore import create_keystore
from dgpu.node.services.billing import BillingPolicy
from dgpu.protocol.messages import JobState, LogChunk

from .test_billing_e2e import PRICE, PROVIDER_FLAGS, script

pytestmark = pytest.mark.integration

SOL = 1_000_000_000


@dataclass
class SolanaNet:
    net: DemoNetwork
    info: LocalRpcInfo
    provider: str


def _keypair(path: Path, seed: bytes) -> Keypair:
    key = create_keystore(path / "identity.json", seed=seed)
    return Keypair.from_bytes(bytes(key.to_solana_keypair()))


@pytest.fixture(scope="module")
def solana_net() -> Iterator[SolanaNet]:
    try:
        binary = build()
    except LocalRpcUnavailable as exc:  # no cargo: skip, except in CI, where these must run
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-billing-sol-"))
    workdir.chmod(0o711)  # script jobs run as nobody under the provider's folder
    net = DemoNetwork(workdir, log_level="INFO")
    deadline = time.monotonic() + 60
    try:
        with LocalRpc(binary, workdir / "solana", clock_speed=60) as info:
            provider = _keypair(workdir / "provider", b"\x51" * 32)
            (workdir / "provider").chmod(0o711)

            async def fund_provider() -> None:
                async with AsyncClient(info.url) as client:
                    await fund(client, info, provider, lamports=10 * SOL, tokens=0)

            trio.run(fund_provider)
            net.start_bootstrap(deadline)
            net.start_provider("provider", "RTX 4090:24576:1", PRICE, deadline, extra=[
                *PROVIDER_FLAGS, "--ledger", "solana", "--solana-rpc", info.url,
                "--program-id", str(info.program_id), "--mint", str(info.mint)])
            yield SolanaNet(net, info, str(provider.pubkey()))
    finally:
        net.stop()
        remove_tree(workdir)


@asynccontextmanager
async def renter(sn: SolanaNet, tmp_path: Path, seed: bytes) -> AsyncIterator[tuple[Client, AsyncClient]]:
    keypair = _keypair(tmp_path / "renter", seed)
    async with AsyncClient(sn.info.url) as rpc:
        await fund(rpc, sn.info, keypair, lamports=10 * SOL, tokens=1_000_000)
        ledger = SolanaEscrow(sn.info.url, sn.info.program_id, keypair, poll_interval_s=0.1)
        async with Client.connect([sn.net.addrs["bootstrap"]], ledger=ledger, data_dir=tmp_path / "renter",
                                  accept_simulated=True, billing_policy=BillingPolicy(poll_interval_s=0.3)) as client:
            assert await client.find_offers(gpu_model="RTX 4090", wait_s=30), "the provider's offer never arrived"
            yield client, rpc
        await ledger.aclose()


async def _tokens(rpc: AsyncClient, account: Pubkey) -> int:
    return int((await rpc.get_token_account_balance(account)).value.amount)


async def _balances(sn: SolanaNet, rpc: AsyncClient, renter: str) -> dict[str, int]:
    mint = sn.info.mint
    return {"renter": await _tokens(rpc, get_associated_token_address(Pubkey.from_string(renter), mint)),
            "provider": await _tokens(rpc, get_associated_token_address(Pubkey.from_string(sn.provider), mint)),
            "treasury": await _tokens(rpc, sn.info.treasury)}


async def _assert_conserved_on_chain(sn: SolanaNet, rpc: AsyncClient, renter: str, escrow: str, *,
                                     before: dict[str, int], deposited: int) -> tuple[int, int]:
    """The rental's money, from token accounts: what the renter lost went to the provider and the
    treasury, at the fee rate; the program-wide audit finds every escrow conserved and this one
    closed with an empty vault. Returns (charged minutes' worth, refunded)."""
    after = await _balances(sn, rpc, renter)
    spent = before["renter"] - after["renter"]
    paid, fee = after["provider"] - before["provider"], after["treasury"] - before["treasury"]
    assert spent == paid + fee and spent % PRICE == 0 and 0 <= spent <= deposited
    assert fee == spent * sn.info.fee_bps // 10_000
    audit = await audit_escrows(rpc, sn.info.program_id, settled=[escrow])
    assert audit.conserved, audit.problems
    assert escrow in audit.gone
    return spent, deposited - spent


async def test_full_run_on_solana_pays_the_minutes_used_and_refunds_the_rest(solana_net: SolanaNet,
                                                                             tmp_path: Path) -> None:
    async with renter(solana_net, tmp_path, b"\x61" * 32) as (client, rpc):
        before = await _balances(solana_net, rpc, client.wallet)
        rental = await client.rent(script=script(3), max_minutes=10, gpu_model="RTX 4090")
        lines: list[str] = []
        result = await rental.run(on_log=lambda c: lines.extend(c.data.splitlines()))
        assert result.state is JobState.FINISHED and result.exit_code == 0
        assert lines[0] == "started" and lines[-1] == "done"
        assert rental.escrow is not None
        spent, refunded = await _assert_conserved_on_chain(solana_net, rpc, client.wallet, rental.escrow.address,
                                                           before=before, deposited=10 * PRICE)
        assert PRICE <= spent < 10 * PRICE and refunded == 10 * PRICE - spent


async def test_early_close_on_solana_stops_the_job_and_refunds_every_unaccrued_minute(solana_net: SolanaNet,
                                                                                      tmp_path: Path) -> None:
    async with renter(solana_net, tmp_path, b"\x62" * 32) as (client, rpc):
        before = await _balances(solana_net, rpc, client.wallet)
        rental = await client.rent(script=script(60), max_minutes=30, gpu_model="RTX 4090")
        started = trio.Event()

        def on_log(chunk: LogChunk) -> None:
            if "tick 2" in chunk.data:
                started.set()

        results: list[RentalResult] = []

        async def run() -> None:
            results.append(await rental.run(on_log=on_log))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await started.wait()
            await rental.close()
        assert results[0].state is JobState.CANCELLED  # the provider saw the escrow gone and stopped
        assert rental.escrow is not None
        _, refunded = await _assert_conserved_on_chain(solana_net, rpc, client.wallet, rental.escrow.address,
                                                       before=before, deposited=30 * PRICE)
        assert refunded >= 20 * PRICE
