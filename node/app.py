"""The node: one factory that builds a typed :class:`ProviderNode` or :class:`RenterNode`.

``run_node(config)`` loads (or creates) the identity, chooses the ledger client once
(:func:`open_ledger`), opens the libp2p host, subscribes to the offers topic with the offer
validator and joins through the bootstrap nodes. A provider also chooses its GPU source once
(:func:`gpu_source`), builds its :class:`~dgpu.node.services.inventory.Inventory`, job service,
offer publisher, negotiator and job server (each gets what it needs in its constructor: see
``provider.py``) and serves ``/dgpu/negotiate`` and ``/dgpu/job``. An optional ``main`` coroutine
(the renter's one-shot job in the demo) runs once the node is ready; when it returns, the node
shuts down cleanly (host closed, pubsub thread stopped, ledger client and store closed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, assert_never

import trio

from dgpu.node.adapters.files import write_addr_file
from dgpu.node.adapters.gpu import NvmlGpus, SimulatedGpus
from dgpu.node.adapters.keystore import load_or_create
from dgpu.node.adapters.p2p import P2PConfig, P2PNode, open_node
from dgpu.node.adapters.p2p_discovery import Discovery
from dgpu.node.adapters.p2p_metrics import P2PCollector
from dgpu.node.adapters.p2p_pubsub import GossipConfig
from dgpu.node.adapters.reachability import NatTraversal
from dgpu.node.adapters.settlement_store import SettlementStore
from dgpu.node.adapters.store import Store
from dgpu.node.clock import new_nonce, wall_clock, wall_clock_ms
from dgpu.node.config import NodeConfig
from dgpu.node.data_dir import API_FILE
from dgpu.node.errors import ConfigError, NetworkError
from dgpu.node.metrics import NodeMetrics, RuntimeStats
from dgpu.node.ports.gpu import GpuScan, GpuSource
from dgpu.node.provider import Offering, start_offering
from dgpu.node.services import blobs
from dgpu.node.services.billing import synced_time
from dgpu.node.services.instrumented_ledger import InstrumentedLedger
from dgpu.node.services.inventory import select_gpus
from dgpu.node.services.offer_sync import SYNC_READ_TIMEOUT_S, OfferSyncServer, SyncCounts, sync_offers_from_peers
from dgpu.node.services.offers import OfferBook, OfferValidator
from dgpu.node.services.settlement import Settlements
from dgpu.protocol.ids import MAX_OFFER_BYTES, OFFERS_SYNC_PROTOCOL, OFFERS_TOPIC, RENDEZVOUS_NAMESPACE
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.ledger import EscrowLedger

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

    from dgpu.node.adapters.http_api import ApiNode
    from dgpu.node.services.api import ApiSettings

__all__ = [
    "AnyNode",
    "NodeRuntime",
    "ProviderNode",
    "RenterNode",
    "api_node",
    "gpu_source",
    "new_nonce",
    "open_ledger",
    "run_node",
    "scan_offered",
    "status_snapshot",
    "wall_clock",
    "wall_clock_ms",
]

log = logging.getLogger(__name__)


@dataclass
class NodeRuntime:
    """What every node has: its key, the host, the offer book and its gate, discovery, metrics,
    the blob shelf (inputs out, results in) and the ledger client chosen by :func:`open_ledger`."""

    config: NodeConfig
    key: SigningKey
    node: P2PNode
    book: OfferBook
    validator: OfferValidator
    discovery: Discovery
    metrics: NodeMetrics
    blobs: blobs.BlobShelf
    #: None when the config names no ledger: nothing can be paid, so no escrow is opened or accepted
    ledger: EscrowLedger | None
    #: the local HTTP API's port, once it listens (``run_node(api=...)``)
    api_port: int | None = None
    #: the ledger actions that end this node's rentals, kept until they land (None without a ledger)
    settlements: Settlements | None = None
    #: the ``/metrics`` server's port, once it listens (``config.metrics_port``)
    metrics_port: int | None = None
    #: the node's database: a provider's jobs, a renter's rentals (re-attached after a restart)
    store: Store | None = None
    #: what the offer syncs from neighbours brought in
    offer_sync: SyncCounts = field(default_factory=SyncCounts)


@dataclass
class RenterNode(NodeRuntime):
    """A renter: finds offers in its book, negotiates, funds escrows and follows its jobs."""


@dataclass
class ProviderNode(NodeRuntime):
    """A provider. ``offering`` is None when it has nothing to offer (no GPU, or no executor that
    can run jobs here): it then stays on the network but publishes nothing and serves no job."""

    offering: Offering | None = None


AnyNode = ProviderNode | RenterNode


def open_ledger(config: NodeConfig, key: SigningKey) -> EscrowLedger | None:
    """The node's escrow ledger client, chosen once from ``config.ledger`` (acting as ``key``)."""
    match config.ledger:
        case "dev":
            if config.ledger_url is None:
                return None
            from dgpu.contracts.devledger.client import DevLedgerEscrow

            return DevLedgerEscrow(config.ledger_url, key)
        case "solana":
            from solana.rpc.commitment import Commitment
            from solders.keypair import Keypair

            from dgpu.contracts.solana_escrow import SolanaEscrow

            assert config.solana_rpc is not None and config.program_id is not None  # NodeConfig checks
            keypair = Keypair.from_bytes(bytes(key.to_solana_keypair()))
            return SolanaEscrow(config.solana_rpc, config.program_id, keypair, commitment=Commitment(config.commitment),
                                compute_unit_price=config.compute_unit_price,
                                compute_unit_limit=config.compute_unit_limit)
        case _:
            assert_never(config.ledger)


def gpu_source(config: NodeConfig, key: SigningKey) -> GpuSource:
    """The provider's GPUs: the simulated ones it declared (development ledgers only, checked by
    the config), otherwise what NVML reports (nothing on a machine without NVIDIA GPUs)."""
    if config.gpus:
        return SimulatedGpus(config.gpus, owner=key.public_key.wallet)
    return NvmlGpus()


async def scan_offered(config: NodeConfig, source: GpuSource) -> GpuScan:
    """The GPUs this provider offers (``--gpu`` applied). Raises ConfigError, saying what was
    looked for and the two ways out, when there are none: a provider with nothing to offer must
    not idle on the network."""
    scan = await source.inventory()  # NVML without a driver fails at once (nvmlInit)
    try:
        gpus = select_gpus(scan.gpus, config.gpu_select)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not gpus:
        raise ConfigError(
            f"no GPU to offer: looked for NVIDIA GPUs through NVML and found none ({scan.message}). "
            "Either install the NVIDIA driver (nvidia-smi must list the GPUs; the nvidia-ml-py package "
            "comes with dgpu), or, on a development network only, declare simulated GPUs with "
            "--simulated-gpu MODEL:VRAM_MIB[:COUNT]")
    return replace(scan, gpus=gpus)


async def _republish_once_joined(node: P2PNode, on_joined: Callable[[], None], *, poll_s: float = 0.5,
                                 quiet_s: float = 3.0, max_wait_s: float = 15.0) -> None:
    """Publish once more when this provider first has peers on the offers topic: the offer it
    published at start reached nobody yet. That is all: nodes that join later get the offer by
    offer sync from their neighbours, so nobody republishes when peers join (the old per-join
    republish was a wave through every node: ~280 publications while 30 nodes formed). The
    first joins of a forming network come in a burst: wait until none is new for ``quiet_s``."""
    seen: set[str] = set()
    first = last = 0.0
    while True:
        peers = set(node.topic_peers(OFFERS_TOPIC))
        now = trio.current_time()
        if peers - seen:
            seen |= peers
            last = now
            first = first or now
        if first and (now - last >= quiet_s or now - first >= max_wait_s):
            on_joined()
            return
        await trio.sleep(poll_s)


def _nat(rt: AnyNode, offering: Offering | None) -> NatTraversal:
    """Reachability and relay reservations (providers); renters learn the relays to fall back on.
    Our addresses change with the reservations: the offer carries the new ones at once."""

    async def readdress() -> None:
        if offering is not None:
            offering.publisher.update_profile(addrs=tuple(rt.node.addrs))

    return NatTraversal(rt.node, list(rt.config.bootstrap), mode=rt.config.reachability,
                        reserve=offering is not None, on_addrs_changed=readdress)


def _offering(rt: AnyNode) -> Offering | None:
    return rt.offering if isinstance(rt, ProviderNode) else None


def status_snapshot(rt: AnyNode) -> dict[str, Any]:
    ps = rt.node.pubsub
    offering = _offering(rt)
    current = offering.publisher.current if offering is not None else None
    return {
        "peer_id": rt.node.peer_id,
        "wallet": rt.key.public_key.wallet,
        "role": rt.config.role,
        "connected": len(rt.node.connected_peers()),
        "topic_peers": len(rt.node.topic_peers(OFFERS_TOPIC)),
        "offers": {p: e.offer.seq for p, e in rt.book._entries.items()},
        "accepted": rt.validator.accepted,
        "rejected": dict(rt.validator.rejected),
        "synced": asdict(rt.offer_sync),
        "guard_drops": dict(ps.guard_drops) if ps is not None else {},
        "history": list(rt.validator.history),
        "own_seq": current.seq if current is not None else None,
        "running_jobs": len(offering.jobs.running) if offering is not None else 0,
        "gpu_leases": offering.inventory.leases if offering is not None else 0,
        "negotiations": dict(offering.negotiator.outcomes) if offering is not None else {},
    }


def runtime_stats(rt: AnyNode) -> RuntimeStats:
    """What ``/metrics`` reports about the node's live state (read at scrape time)."""
    offering = _offering(rt)
    jobs: dict[str, int] = {}
    if offering is not None:
        jobs["running"] = len(offering.jobs.running)
        for state in offering.jobs.finished.values():
            jobs[str(state)] = jobs.get(str(state), 0) + 1
    rentals: dict[str, int] = {}
    if offering is not None:
        rentals = {"agreed": offering.inventory.awaiting_jobs, "billing": len(offering.billing)}
    return RuntimeStats(
        peers=len(rt.node.connected_peers()), offer_book_size=len(rt.book),
        offers_accepted=rt.validator.accepted, offers_rejected=dict(rt.validator.rejected),
        offer_sync=rt.offer_sync,
        negotiations=dict(offering.negotiator.outcomes) if offering is not None else None, jobs=jobs,
        rentals=rentals, gpus=tuple(offering.monitor.readings()) if offering is not None else ())


async def _write_status(rt: AnyNode, path: Path) -> None:
    """The status file (tests, benches) every half second, when it changed: rewriting an
    unchanged one was a third of an idle node's CPU in a 100-node bench on one machine."""
    written = ""
    while True:
        text = json.dumps(status_snapshot(rt))
        if text != written:
            write_addr_file(path, text)
            written = text
        await trio.sleep(0.5)


async def _republish_on_signal(offering: Offering) -> None:
    """SIGUSR1 = republish now (tests and the benchmark trigger propagation this way)."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            try:
                await offering.publisher.publish_now()
            except NetworkError as exc:
                log.warning("republish failed: %s", exc)


async def run_node(config: NodeConfig, *,
                   main: Callable[[AnyNode], Awaitable[None]] | None = None,
                   api: ApiSettings | None = None, stopping: trio.Event | None = None,
                   task_status: TaskStatus[AnyNode] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node until cancelled, until ``main`` returns, or (gracefully: a provider first
    withdraws its offer while its connections are up) until ``stopping`` is set."""
    key = load_or_create(config.key_file, passphrase=os.environ.get(config.passphrase_env))
    p2p_config = P2PConfig(
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        gossip=GossipConfig(max_data_bytes=MAX_OFFER_BYTES),
        reachability=config.reachability,
    )
    source = gpu_source(config, key) if config.role == "provider" else None
    scan = await scan_offered(config, source) if source is not None else None  # before any network
    metrics = NodeMetrics()
    async with contextlib.AsyncExitStack() as stack:
        client = open_ledger(config, key)
        ledger: EscrowLedger | None = None
        if client is not None:  # every service's ledger calls are counted through this one object
            ledger = InstrumentedLedger(client, metrics)
            stack.push_async_callback(_close_shielded, ledger.aclose)
        node = await stack.enter_async_context(open_node(key, p2p_config))
        metrics.register(P2PCollector(node))
        book = OfferBook()
        validator = OfferValidator(book, clock=wall_clock,
                                   accept_simulated=config.accept_simulated or bool(
                                       config.role == "provider" and any(g.simulated for g in config.gpus)))
        await node.subscribe(OFFERS_TOPIC, validator)
        node.set_handler(OFFERS_SYNC_PROTOCOL, OfferSyncServer(book, clock=wall_clock).handle,
                         max_frame_bytes=MAX_OFFER_BYTES, read_timeout_s=SYNC_READ_TIMEOUT_S,
                         handler_timeout_s=30.0)
        discovery = Discovery(node, list(config.bootstrap), RENDEZVOUS_NAMESPACE,
                              advertise=config.role == "provider")
        shelf = blobs.BlobShelf(config.data_dir / "blobs")
        blobs.register(node, shelf)
        # opened before the nursery, so it closes after every job task
        store = await Store.open(config.data_dir / "node.sqlite3")
        stack.push_async_callback(store.close)
        settle_store = None
        if ledger is not None:
            settle_store = await SettlementStore.open(config.data_dir / "settlements.sqlite3")
            stack.push_async_callback(settle_store.close)
        nursery = await stack.enter_async_context(trio.open_nursery())
        rt: AnyNode
        if source is not None and scan is not None:
            offering = await start_offering(config, key, node, source=source, scan=scan, shelf=shelf, book=book,
                                            ledger=ledger, store=store, settle_store=settle_store, metrics=metrics,
                                            nursery=nursery)
            rt = ProviderNode(config, key, node, book, validator, discovery, metrics, shelf, ledger,
                              store=store, offering=offering,
                              settlements=offering.settlements if offering else None)
        else:
            settlements = None
            if ledger is not None and settle_store is not None:
                settlements = Settlements(ledger, settle_store, ledger_now=(await synced_time(ledger)).now,
                                          retry_max_s=config.settle_retry_max_s)
                await nursery.start(settlements.run)
            rt = RenterNode(config, key, node, book, validator, discovery, metrics, shelf, ledger, store=store,
                            settlements=settlements)
        metrics.set_runtime(lambda: runtime_stats(rt))
        await nursery.start(partial(discovery.run, max_join_tries=config.join_tries))
        nursery.start_soon(partial(sync_offers_from_peers, node, validator, counts=rt.offer_sync))
        offering = _offering(rt)
        await nursery.start(_nat(rt, offering).run)
        if offering is not None:
            await nursery.start(offering.publisher.run)
            nursery.start_soon(_republish_once_joined, node, offering.publisher.changed)
            if threading.current_thread() is threading.main_thread():
                nursery.start_soon(_republish_on_signal, offering)
        if config.status_file is not None:
            nursery.start_soon(_write_status, rt, config.status_file)
        if config.metrics_port is not None:
            from dgpu.node.adapters.metrics_http import serve_metrics  # the web stack only when asked for

            rt.metrics_port = await nursery.start(serve_metrics, metrics.registry, config.metrics_host,
                                                  config.metrics_port)
            log.info("metrics on http://%s:%d/metrics", config.metrics_host, rt.metrics_port)
        if config.addr_file is not None:
            write_addr_file(config.addr_file, node.multiaddr)
        log.info("%s %s listening on %s", config.role, key.public_key.wallet, node.multiaddr)
        if api is not None:
            from dgpu.node.adapters.http_api import serve_node_api

            rt.api_port = await nursery.start(serve_node_api, api_node(rt), api)
            api_url = f"http://{api.host}:{rt.api_port}"
            # the renter commands find their node's API here, from any folder
            write_addr_file(config.data_dir / API_FILE, json.dumps({"url": api_url}))
            log.info("local API on %s/docs", api_url)
        if stopping is not None:
            nursery.start_soon(_stop_when, stopping, offering, nursery.cancel_scope)
        task_status.started(rt)
        if main is not None:
            await main(rt)
            nursery.cancel_scope.cancel()


async def _stop_when(stopping: trio.Event, offering: Offering | None, scope: trio.CancelScope) -> None:
    await stopping.wait()
    if offering is not None:
        with trio.move_on_after(3):
            try:
                await offering.publisher.withdraw_now("stopped")
            except NetworkError as exc:
                log.info("offer withdrawal failed: %s", exc)
    scope.cancel()


def api_node(rt: AnyNode) -> ApiNode:
    """What the local HTTP API serves from this node."""
    from dgpu.node.adapters.http_api import ApiNode

    offering = _offering(rt)
    return ApiNode(key=rt.key, network=rt.node, book=rt.book, shelf=rt.blobs, metrics=rt.metrics, ledger=rt.ledger,
                   data_dir=rt.config.data_dir, accept_simulated=rt.config.accept_simulated, clock=wall_clock,
                   nonce=new_nonce, publisher=offering.publisher if offering is not None else None,
                   rentals=rt.store, settlements=rt.settlements)


async def _close_shielded(aclose: Callable[[], Awaitable[None]]) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(5):  # a hung close must not stall shutdown
        await aclose()
