"""A little dGPU network of OS processes on 127.0.0.1, shared by the module's tests.

``network``: 1 bootstrap node serving the development ledger over HTTP, and 2 providers
(simulated GPUs) that verify and bill escrows on that ledger (``--ledger-url``), started once
per module (CI has 2 cores). ``renter``: an in-process node in the test's own trio loop (a
separate process from every provider), with an offer book, the validator and a wallet on the
ledger funded by the faucet; it pays with ``LedgerFunder`` (``renter.funder()``). Each child
binds port 0 and reports its multiaddr (and the bootstrap its HTTP URL) through a file.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.adapters.p2p import P2PConfig, P2PNode, open_node
from dgpu.node.adapters.p2p_discovery import Discovery
from dgpu.node.adapters.p2p_pubsub import GossipConfig
from dgpu.node.services.offers import OfferBook, OfferValidator
from dgpu.node.services.renter import LedgerFunder
from dgpu.protocol.escrow import RentalIds
from dgpu.protocol.ids import MAX_OFFER_BYTES, OFFERS_TOPIC, RENDEZVOUS_NAMESPACE
from dgpu.protocol.keys import SigningKey

START_TIMEOUT_S = 60.0  # a loaded CI machine can take tens of seconds to start a process
#: development base units the faucet gives each test's renter (deposits here are a few hundred)
RENTER_FUNDS = 1_000_000


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    addr: str
    data_dir: Path
    status_file: Path | None = None

    def status(self) -> dict[str, Any]:
        assert self.status_file is not None
        return json.loads(self.status_file.read_text())

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def key(self) -> SigningKey:
        raw = json.loads((self.data_dir / "identity.json").read_text())
        return SigningKey.from_solana_keypair(bytes(raw))


@dataclass
class Network:
    workdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    #: the bootstrap node's HTTP base URL: the development ledger
    ledger_url: str = ""

    @property
    def bootstrap(self) -> str:
        return self.procs["bootstrap"].addr

    def spawn(self, name: str, args: list[str], *, status: bool = True,
              prefix: list[str] | None = None) -> Proc:
        """``dgpu <args>`` as a child; ``prefix`` wraps the command (e.g. ``ip netns exec NS``)."""
        data_dir = self.workdir / name
        addr_file = self.workdir / f"{name}.addr"
        status_file = self.workdir / f"{name}.status" if status else None
        log = (self.workdir / f"{name}.log").open("wb")
        cmd = [*(prefix or []), sys.executable, "-m", "dgpu.client.main", *args, "--data-dir", str(data_dir),
               "--addr-file", str(addr_file), "--log-level", "INFO"]
        if status_file is not None:
            cmd += ["--status-file", str(status_file)]
        popen = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not addr_file.exists():
            if popen.poll() is not None or time.monotonic() > deadline:
                popen.kill()
                raise RuntimeError(f"{name} did not start:\n"
                                   + (self.workdir / f"{name}.log").read_text()[-3000:])
            time.sleep(0.05)
        proc = Proc(name, popen, addr_file.read_text().strip(), data_dir, status_file)
        self.procs[name] = proc
        return proc

    def provider(self, name: str, gpu: str, price: int, *extra: str,
                 prefix: list[str] | None = None) -> Proc:
        return self.spawn(name, ["node", "--role", "provider", "--bootstrap", self.bootstrap,
                                 "--simulated-gpu", gpu, "--price", str(price),
                                 "--ledger-url", self.ledger_url, "--billing-poll", "0.5", *extra],
                          prefix=prefix)

    def start_bootstrap(self, *extra: str, name: str = "bootstrap",
                        prefix: list[str] | None = None) -> Proc:
        """A bootstrap node with its HTTP services (the development ledger); the first one started
        sets ``ledger_url``."""
        url_file = self.workdir / f"{name}.url"
        proc = self.spawn(name, ["bootstrap", "--http-port", "0", "--http-url-file", str(url_file), *extra],
                          status=False, prefix=prefix)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not url_file.exists():
            if not proc.alive or time.monotonic() > deadline:
                raise RuntimeError("the bootstrap node did not serve HTTP:\n"
                                   + (self.workdir / f"{name}.log").read_text()[-3000:])
            time.sleep(0.05)
        self.ledger_url = self.ledger_url or url_file.read_text().strip()
        return proc

    def stop_all(self) -> dict[str, int | None]:
        for p in self.procs.values():
            if p.alive:
                p.popen.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
                codes[name] = None
        return codes


@contextmanager
def fresh_network(prefix: str, *, with_bootstrap: bool = True) -> Iterator[Network]:
    """A network of its own in a new folder (with a started bootstrap node unless told not
    to); every process is stopped and the folder removed on exit."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o711)  # a root provider runs script jobs as nobody below it
    net = Network(workdir)
    try:
        if with_bootstrap:
            net.start_bootstrap()
        yield net
    finally:
        net.stop_all()
        remove_tree(workdir)


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-it-"))
    workdir.chmod(0o711)  # a root provider runs script jobs as nobody below it
    net = Network(workdir)
    try:
        net.start_bootstrap()
        net.provider("provider-a", "RTX 4090:24576:1", 100, "--max-jobs", "1")
        net.provider("provider-b", "RTX 4080:16384:2", 200, "--max-jobs", "4")
        yield net
    finally:
        codes = net.stop_all()
        remove_tree(workdir)  # and the job folders a killed provider left mounted
        killed = [n for n, c in codes.items() if c is None]
        assert not killed, f"processes did not stop on SIGTERM: {killed}"


@dataclass
class Renter:
    key: SigningKey
    node: P2PNode
    book: OfferBook
    validator: OfferValidator
    #: this renter's wallet on the network's development ledger (funded by the faucet)
    ledger: DevLedgerEscrow
    #: rental ids only increase (docs/escrow-rules.md)
    rental_ids: RentalIds = field(default_factory=lambda: RentalIds(lambda: time.time_ns() // 1000))

    def funder(self) -> LedgerFunder:
        """Opens a real escrow on the ledger for each quote (a fresh rental id each time)."""
        return LedgerFunder(self.ledger, self.rental_ids)


@pytest.fixture
async def renter(network: Network) -> AsyncIterator[Renter]:
    key = SigningKey(secrets.token_bytes(32))
    ledger = DevLedgerEscrow(network.ledger_url, key)
    try:
        assert await ledger.faucet(RENTER_FUNDS) == RENTER_FUNDS
        async with open_node(key, P2PConfig(gossip=GossipConfig(max_data_bytes=MAX_OFFER_BYTES))
                             ) as node, trio.open_nursery() as nursery:
            book = OfferBook()
            validator = OfferValidator(book, clock=lambda: int(time.time()), accept_simulated=True)
            await node.subscribe(OFFERS_TOPIC, validator)
            disc = Discovery(node, [network.bootstrap], RENDEZVOUS_NAMESPACE, advertise=False)
            await nursery.start(disc.run)
            yield Renter(key, node, book, validator, ledger)
            nursery.cancel_scope.cancel()
    finally:
        await ledger.aclose()


async def wait_until(pred: Any, timeout: float = 15.0, interval: float = 0.1) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(interval)


@pytest.fixture
def until() -> Any:
    return wait_until
