"""One billing network per escrow ledger, for the rental tests parametrised over both.

``dev``: a bootstrap node serving the development ledger (clock x60) and provider processes.
``solana``: the escrow program on the local development endpoint (``dgpu-local-rpc``, clock x60),
a bootstrap node, and providers run with ``--ledger solana`` (funded with SOL for fees).

Either way a renter is a ``dgpu.client.Client`` in the test process, and a rental's money is read
back from the ledger, never from the client: on the development ledger from the closed escrow
(kept, vault empty); on Solana, where a settled escrow's account is reclaimed, from the token
accounts of the renter, the provider and the treasury and from the program-wide audit (every
escrow account of the program conserved; this one closed with an empty vault).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from solana.rpc.async_api import AsyncClient
from solders.keypair import Keypair
from solders.token.state import TokenAccount

from dgpu.client import Client
from dgpu.client.demo import DemoNetwork
from dgpu.contracts.local_rpc import LocalRpc, LocalRpcInfo, LocalRpcUnavailable, build, fund
from dgpu.contracts.solana_audit import audit_escrows
from dgpu.contracts.solana_escrow import SolanaEscrow
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.adapters.keystore import create_keystore, public_key_of
from dgpu.node.services.billing import BillingPolicy
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.ledger import EscrowHandle

PROVIDER_FLAGS = ["--executor", "script", "--claim-interval", "120", "--billing-grace", "60",
                  "--billing-poll", "0.3", "--meter-interval", "1", "--start-window", "3"]
PRICE = 1_000
#: ledger seconds per wall second on both ledgers: one wall second is one ledger minute
CLOCK_SPEED = 60
SOL = 1_000_000_000
RENTER_TOKENS = 1_000_000


@dataclass(frozen=True)
class Accounting:
    """One settled rental's money as the ledger holds it (base units)."""

    deposited: int
    paid: int
    fee: int
    refunded: int
    rate_per_minute: int

    @property
    def minutes(self) -> int:
        return (self.paid + self.fee) // self.rate_per_minute


@dataclass
class LedgerNet:
    """A running network on one ledger: ``renter`` connects funded clients, ``accounting`` reads a
    rental's money back from the ledger and checks it is conserved."""

    ledger: str
    net: DemoNetwork
    #: the provider offering "RTX 4090" (the rental tests' default offer)
    provider: str = ""
    #: Solana only: the local endpoint's info (url, program id, mint, treasury, fee)
    info: LocalRpcInfo | None = None
    _seeds: Iterator[int] = field(default_factory=lambda: iter(range(0x40, 0x100)))

    @property
    def sol(self) -> LocalRpcInfo:
        assert self.info is not None, "not a Solana network"
        return self.info

    def start_provider(self, name: str, gpu: str, deadline: float) -> str:
        """A provider process of ``gpu`` at PRICE on this ledger; its wallet."""
        extra = list(PROVIDER_FLAGS)
        if self.ledger == "solana":
            keypair = _keypair(self.net.workdir / name, bytes([next(self._seeds)]) * 32)
            (self.net.workdir / name).chmod(0o711)  # script jobs run as nobody under the provider's folder
            trio.run(self._fund, keypair, 0)
            extra += ["--ledger", "solana", "--solana-rpc", self.sol.url, "--program-id", str(self.sol.program_id),
                      "--mint", str(self.sol.mint)]
        self.net.start_provider(name, gpu, PRICE, deadline, extra=extra)
        return public_key_of(self.net.workdir / name / "identity.json").wallet

    async def _fund(self, keypair: Keypair, tokens: int) -> None:
        async with AsyncClient(self.sol.url) as rpc:
            await fund(rpc, self.sol, keypair, lamports=10 * SOL, tokens=tokens)

    @asynccontextmanager
    async def renter(self, data_dir: Path, *, gpu_model: str = "RTX 4090", **policy: float) -> AsyncIterator[Client]:
        """A client holding RENTER_TOKENS on this ledger that has seen a ``gpu_model`` offer."""
        billing = BillingPolicy(poll_interval_s=0.3, **policy)  # type: ignore[arg-type]
        if self.ledger == "dev":
            async with Client.connect([self.net.addrs["bootstrap"]], ledger_url=self.net.ledger_url,
                                      data_dir=data_dir, accept_simulated=True, billing_policy=billing) as client:
                assert client.ledger is not None
                await client.ledger.faucet(RENTER_TOKENS)  # type: ignore[attr-defined]
                await _wait_offer(client, gpu_model)
                yield client
            return
        keypair = _keypair(data_dir, bytes([next(self._seeds)]) * 32)
        await self._fund(keypair, RENTER_TOKENS)
        ledger = SolanaEscrow(self.sol.url, self.sol.program_id, keypair, poll_interval_s=0.1)
        try:
            async with Client.connect([self.net.addrs["bootstrap"]], ledger=ledger, data_dir=data_dir,
                                      accept_simulated=True, billing_policy=billing) as client:
                await _wait_offer(client, gpu_model)
                yield client
        finally:
            await ledger.aclose()

    async def balances(self, client: Client, provider: str | None = None) -> dict[str, int]:
        """The token balances a rental moves on Solana: renter, provider, treasury ({} on dev)."""
        if self.ledger == "dev":
            return {}
        assert client.ledger is not None
        async with AsyncClient(self.sol.url) as rpc:
            treasury = (await rpc.get_account_info(self.sol.treasury)).value
        assert treasury is not None
        return {"renter": await client.ledger.balance(client.wallet),
                "provider": await client.ledger.balance(provider or self.provider),
                "treasury": TokenAccount.from_bytes(bytes(treasury.data)).amount}

    async def accounting(self, client: Client, escrow: EscrowHandle, *, deposited: int,
                         before: dict[str, int]) -> Accounting:
        """The settled rental's money, read from the ledger and checked conserved: paid + fee +
        refunded == deposited, the fee at the ledger's rate on the minutes charged, the escrow
        closed with an empty vault. ``before``: :meth:`balances` from before the rental."""
        assert client.ledger is not None
        if self.ledger == "dev":
            view = await client.ledger.fetch(escrow.address)
            assert view.status is EscrowStatus.CLOSED and view.vault_balance == 0
            assert view.deposited == deposited
            assert view.paid + view.fee_paid + view.refunded == view.deposited
            assert view.paid + view.fee_paid == view.claimed_minutes * view.rate_per_minute
            assert view.fee_paid == view.claimed_minutes * view.rate_per_minute * view.fee_bps // 10_000
            return Accounting(view.deposited, view.paid, view.fee_paid, view.refunded, view.rate_per_minute)
        after = await self.balances(client, escrow.provider)
        spent = before["renter"] - after["renter"]
        paid, fee = after["provider"] - before["provider"], after["treasury"] - before["treasury"]
        assert spent == paid + fee and spent % PRICE == 0 and 0 <= spent <= deposited
        assert fee == spent * self.sol.fee_bps // 10_000
        async with AsyncClient(self.sol.url) as rpc:
            audit = await audit_escrows(rpc, self.sol.program_id, settled=[escrow.address])
        assert audit.conserved, audit.problems
        assert escrow.address in audit.gone  # closed: the account and its vault reclaimed, the vault empty
        return Accounting(deposited, paid, fee, deposited - spent, PRICE)


def _keypair(folder: Path, seed: bytes) -> Keypair:
    key = create_keystore(folder / "identity.json", seed=seed)
    return Keypair.from_bytes(bytes(key.to_solana_keypair()))


async def _wait_offer(client: Client, gpu_model: str) -> None:
    # a fresh node learns offers by gossip; on a loaded machine that can take a few seconds
    assert await client.find_offers(gpu_model=gpu_model, wait_s=30), f"no {gpu_model} offer arrived"


def _workdir(prefix: str) -> Path:
    # script jobs run as nobody under the providers' folders: every parent must be traversable,
    # which pytest's own tmp folders (0700) are not
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o711)
    return workdir


def dev_network() -> Iterator[LedgerNet]:
    """The development-ledger network (a generator for a module-scoped fixture)."""
    workdir = _workdir("dgpu-billing-")
    net = DemoNetwork(workdir, log_level="INFO")
    try:
        net.start_bootstrap(time.monotonic() + 60, ledger_speed=CLOCK_SPEED)
        ln = LedgerNet("dev", net)
        ln.provider = ln.start_provider("provider", "RTX 4090:24576:1", time.monotonic() + 60)
        yield ln
    finally:
        net.stop()
        remove_tree(workdir)  # and the job folders a killed provider left mounted


def solana_network() -> Iterator[LedgerNet]:
    """The Solana network; skipped without cargo (except in CI, where it must run)."""
    try:
        binary = build()
    except LocalRpcUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
    workdir = _workdir("dgpu-billing-sol-")
    net = DemoNetwork(workdir, log_level="INFO")
    with ExitStack() as stack:
        stack.callback(remove_tree, workdir)
        stack.callback(net.stop)
        info = stack.enter_context(LocalRpc(binary, workdir / "solana", clock_speed=CLOCK_SPEED))
        net.start_bootstrap(time.monotonic() + 60)
        ln = LedgerNet("solana", net, info=info)
        ln.provider = ln.start_provider("provider", "RTX 4090:24576:1", time.monotonic() + 60)
        yield ln
