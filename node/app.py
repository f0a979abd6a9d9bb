"""The node: a nursery of services over one libp2p host.

``run_node(config)`` loads (or creates) the identity, opens the host, subscribes to the offers
topic with the offer validator, joins through the bootstrap nodes, and for a provider starts
the offer publisher and serves ``/dgpu/negotiate`` and ``/dgpu/job``. An optional ``main``
coroutine (the renter's one-shot job in the demo) runs once the node is ready; when it
returns, the node shuts down cleanly (host closed, pubsub thread stopped).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dgpu.contracts.errors import ContractsError
from dgpu.contracts.escrow_api import EscrowHandle, EscrowReceipt
from dgpu.node.adapters.executor import ResourceLimits
from dgpu.node.adapters.keystore import load_or_create
from dgpu.node.adapters.p2p import P2PConfig, P2PNode, open_node
from dgpu.node.adapters.p2p_discovery import Discovery
from dgpu.node.adapters.p2p_pubsub import GossipConfig
from dgpu.node.adapters.reachability import NatTraversal
from dgpu.node.config import DEV_MINT, NodeConfig
from dgpu.node.errors import NetworkError
from dgpu.node.metrics import NodeMetrics, RuntimeStats
from dgpu.node.services import blobs
from dgpu.node.services.billing import BillingPolicy, LedgerEscrowVerifier, LedgerTime, provider_billing
from dgpu.node.services.job_stream import ExecutorLike, JobServer, OnRunning
from dgpu.node.services.negotiation import (
    AgreementStore,
    EscrowVerifier,
    ProviderNegotiator,
    ProviderPolicy,
    RefuseAll,
)
from dgpu.node.services.offers import OfferBook, OfferPublisher, OfferValidator
from dgpu.protocol.ids import (
    JOB_PROTOCOL,
    MAX_FRAME_BYTES,
    MAX_OFFER_BYTES,
    NEGOTIATE_PROTOCOL,
    OFFERS_TOPIC,
    RENDEZVOUS_NAMESPACE,
)
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Agreement, Executor, Offer

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

    from dgpu.node.services.api import ApiSettings

__all__ = ["NodeRuntime", "run_node", "status_snapshot", "wall_clock", "write_addr_file"]

log = logging.getLogger(__name__)


def wall_clock() -> int:
    return int(time.time())


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def new_nonce() -> bytes:
    return secrets.token_bytes(16)


def write_addr_file(path: Path, addr: str) -> None:
    """Write atomically (tmp + rename) so a reader never sees half an address."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(addr + "\n")
    os.replace(tmp, path)


@dataclass
class NodeRuntime:
    config: NodeConfig
    key: SigningKey
    node: P2PNode
    book: OfferBook
    validator: OfferValidator
    discovery: Discovery
    publisher: OfferPublisher | None = None
    negotiator: ProviderNegotiator | None = None
    jobs: JobServer | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def _executors(rt: NodeRuntime, nursery: trio.Nursery
                     ) -> dict[Executor, ExecutorLike]:
    """The executors this provider can really run, each behind the durable job service.

    Jobs go through :class:`JobService` (SQLite lifecycle, per-minute meter, reconcile after a
    restart). Docker is offered only when an engine answers; the script executor only when the
    provider opted in (``--executor script``) — its weaker isolation is stated in the logs."""
    from dgpu.node.adapters.gpu import NvmlGpus
    from dgpu.node.adapters.store import Store
    from dgpu.node.errors import ExecutionError
    from dgpu.node.services.durable import DurableExecutor
    from dgpu.node.services.jobs import JobService
    from dgpu.node.services.meter import Meter

    config = rt.config
    raw: dict[str, Any] = {}
    if Executor.DOCKER in config.executors:
        from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy

        try:
            raw["docker"] = await DockerExecutor.connect(DockerPolicy(
                workspace_root=config.data_dir / "docker", instance=rt.key.public_key.wallet[:16],
                allowed_images=frozenset(config.allowed_images),
                max_concurrent_jobs=config.max_concurrent_jobs))
        except ExecutionError as exc:
            log.warning("docker executor unavailable (%s); not offering docker jobs", exc)
    if Executor.SCRIPT in config.executors:
        from dgpu.node.adapters.script_executor import ScriptExecutor, ScriptPolicy

        try:
            script = await ScriptExecutor.create(ScriptPolicy(enabled=True, scratch_root=config.data_dir / "jobs"))
        except ExecutionError as exc:
            log.warning("script executor unavailable (%s); not offering script jobs", exc)
        else:
            log.warning("script executor enabled: %s", script.isolation_statement)
            raw["script"] = script
    store = await Store.open(config.data_dir / "node.sqlite3")
    rt.extra["store"] = store
    gpus = NvmlGpus()
    meter = Meter(store, gpus if (await gpus.inventory()).available else None, interval_s=config.meter_interval_s)
    service = JobService(store, raw, meter)
    report = await service.reconcile(nursery)
    if report.reattached or report.finished or report.failed:
        log.info("reconciled after restart: %d re-attached, %d finished meanwhile, %d failed",
                 len(report.reattached), len(report.finished), len(report.failed))
    return {Executor(name): DurableExecutor(service, store, name, nursery) for name in raw}


async def _watch_peers(rt: NodeRuntime, *, poll_s: float = 0.5, quiet_s: float = 3.0,
                       max_wait_s: float = 15.0) -> None:
    """Republish our offer when peers we never saw join the topic (they missed it).

    Only first sightings count: peers that flap in and out of the topic (reconnects,
    stream repairs) must not turn every node into a continuous republisher. And a wave of
    joins (a network forming, discovery dialling several peers) costs one republish, not
    one per peer: we wait until no new peer has appeared for ``quiet_s`` (at most
    ``max_wait_s``). Every republish reaches every node, so one per batch of joiners was an
    N-squared storm (30 nodes: ~280 publications at start-up, a backlog of ~40 s of CPU on
    2 cores that delayed every later offer by seconds).
    """
    seen: set[str] = set()
    first_new: float | None = None
    last_new = 0.0
    while True:
        peers = set(rt.node.topic_peers(OFFERS_TOPIC))
        now = trio.current_time()
        if peers - seen:
            last_new = now
            if first_new is None:
                first_new = now
        seen |= peers
        if len(seen) > 10_000:  # bounded; forgetting only means one extra republish
            seen = peers
        if first_new is not None and (now - last_new >= quiet_s or now - first_new >= max_wait_s):
            first_new = None
            if rt.publisher is not None:
                rt.publisher.changed()
        await trio.sleep(poll_s)


def status_snapshot(rt: NodeRuntime) -> dict[str, Any]:
    ps = rt.node.pubsub
    return {
        "peer_id": rt.node.peer_id,
        "wallet": rt.key.public_key.wallet,
        "role": rt.config.role,
        "connected": len(rt.node.connected_peers()),
        "topic_peers": len(rt.node.topic_peers(OFFERS_TOPIC)),
        "offers": {p: e.offer.seq for p, e in rt.book._entries.items()},
        "accepted": rt.validator.accepted,
        "rejected": dict(rt.validator.rejected),
        "guard_drops": dict(ps.guard_drops) if ps is not None else {},
        "history": list(rt.validator.history),
        "own_seq": rt.publisher.current.seq if rt.publisher and rt.publisher.current else None,
        "running_jobs": len(rt.jobs.running) if rt.jobs else 0,
        "negotiations": dict(rt.negotiator.outcomes) if rt.negotiator else {},
    }


def runtime_stats(rt: NodeRuntime) -> RuntimeStats:
    """What ``/metrics`` reports about the node's live state (read at scrape time)."""
    jobs: dict[str, int] = {}
    if rt.jobs is not None:
        jobs["running"] = len(rt.jobs.running)
        for state in rt.jobs.finished.values():
            jobs[str(state)] = jobs.get(str(state), 0) + 1
    return RuntimeStats(
        peers=len(rt.node.connected_peers()), offer_book_size=len(rt.book),
        offers_accepted=rt.validator.accepted, offers_rejected=dict(rt.validator.rejected),
        negotiations=dict(rt.negotiator.outcomes) if rt.negotiator else {}, jobs=jobs)


async def _write_status(rt: NodeRuntime, path: Path) -> None:
    while True:
        write_addr_file(path, json.dumps(status_snapshot(rt)))
        await trio.sleep(0.5)


async def _republish_on_signal(rt: NodeRuntime) -> None:
    """SIGUSR1 = republish now (tests and the benchmark trigger propagation this way)."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            if rt.publisher is not None:
                try:
                    await rt.publisher.publish_now()
                except NetworkError as exc:
                    log.warning("republish failed: %s", exc)


async def run_node(config: NodeConfig, *,
                   main: Callable[[NodeRuntime], Awaitable[None]] | None = None,
                   api: ApiSettings | None = None,
                   task_status: TaskStatus[NodeRuntime] = trio.TASK_STATUS_IGNORED) -> None:
    key = load_or_create(config.key_file, passphrase=os.environ.get(config.passphrase_env))
    p2p_config = P2PConfig(
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        gossip=GossipConfig(max_data_bytes=MAX_OFFER_BYTES),
        reachability=config.reachability,
    )
    async with open_node(key, p2p_config) as node, trio.open_nursery() as nursery:
        book = OfferBook()
        validator = OfferValidator(book, clock=wall_clock,
                                   accept_simulated=config.accept_simulated or bool(
                                       config.role == "provider" and any(
                                           g.simulated for g in config.gpus)))
        await node.subscribe(OFFERS_TOPIC, validator)
        discovery = Discovery(node, list(config.bootstrap), RENDEZVOUS_NAMESPACE,
                              advertise=config.role == "provider")
        rt = NodeRuntime(config, key, node, book, validator, discovery)
        rt.extra["metrics"] = NodeMetrics(runtime=lambda: runtime_stats(rt))
        rt.extra["blobs"] = blobs.BlobShelf(config.data_dir / "blobs")  # inputs out, results in
        blobs.register(node, rt.extra["blobs"])
        if config.role == "provider":
            await _start_provider(rt, nursery)
        await nursery.start(discovery.run)
        await nursery.start(_nat(rt).run)
        if rt.publisher is not None:
            await nursery.start(rt.publisher.run)
            nursery.start_soon(_watch_peers, rt)
        if config.status_file is not None:
            nursery.start_soon(_write_status, rt, config.status_file)
        if rt.publisher is not None and threading.current_thread() is threading.main_thread():
            nursery.start_soon(_republish_on_signal, rt)
        if config.addr_file is not None:
            write_addr_file(config.addr_file, node.multiaddr)
        log.info("%s %s listening on %s", config.role, key.public_key.wallet, node.multiaddr)
        if api is not None:
            from dgpu.node.adapters.http_api import serve_node_api

            rt.extra["api_port"] = await nursery.start(serve_node_api, rt, api)
            log.info("local API on http://%s:%d/docs", api.host, rt.extra["api_port"])
        task_status.started(rt)
        if main is not None:
            await main(rt)
            nursery.cancel_scope.cancel()


def _nat(rt: NodeRuntime) -> NatTraversal:
    """Reachability and relay reservations (providers); renters learn the relays to fall back on.
    A change of our addresses (reservations made or dropped) republishes the offer at once."""

    async def republish() -> None:
        if rt.publisher is not None:
            await rt.publisher.publish_now()

    nat = NatTraversal(rt.node, list(rt.config.bootstrap), mode=rt.config.reachability,
                       reserve=rt.config.role == "provider", on_addrs_changed=republish)
    rt.extra["nat"] = nat
    return nat


async def _open_ledger(rt: NodeRuntime) -> tuple[Any, str, LedgerTime] | None:
    """The provider's ledger client, the mint it pays in and an estimate of the ledger's clock."""
    if rt.config.ledger_url is None:
        return None
    from dgpu.contracts.devledger.client import DevLedgerEscrow

    ledger = DevLedgerEscrow(rt.config.ledger_url, rt.key)
    mint = (await ledger.mint_info()).address
    clock = LedgerTime()
    await clock.sync(ledger)
    rt.extra["ledger"] = ledger
    return ledger, mint, clock


async def _start_provider(rt: NodeRuntime, nursery: trio.Nursery) -> None:
    config, key, node = rt.config, rt.key, rt.node
    if not config.gpus:
        log.warning("provider has no GPU inventory; its offer lists none and it will not publish")
        return
    executors = await _executors(rt, nursery)
    offered = tuple(e for e in config.executors if e in executors)
    if not offered:
        log.warning("no executor can run jobs here; the provider will not publish an offer")
        return
    ledger_setup = await _open_ledger(rt)
    if ledger_setup is None:
        log.warning("no ledger configured (--ledger-url): every escrow will be refused")
    ledger_name, mint = (ledger_setup[0].ledger, ledger_setup[1]) if ledger_setup else ("none", DEV_MINT)
    deadline_clock = ledger_setup[2].now if ledger_setup else wall_clock
    template = Offer(
        provider=key.public_key.wallet, addrs=tuple(node.addrs)[:8], gpus=config.gpus,
        price_per_minute=config.price_per_gpu_minute, mint=mint, ledger=ledger_name,
        region=config.region, executors=offered, seq=0, issued_at=0, expires_at=1,
    )
    # the offers we published recently, by seq: a request may quote one a republish ago
    recent: OrderedDict[int, Offer] = OrderedDict()

    async def publish(data: bytes) -> None:
        await node.publish(OFFERS_TOPIC, data)

    # addrs follow the node's: relay reservations come and go (node.addrs lists circuits then)
    publisher = OfferPublisher(key, lambda: template.model_copy(update={"addrs": tuple(node.addrs)[:8]}),
                               publish, clock=wall_clock,
                               clock_ms=wall_clock_ms, ttl_s=config.offer_ttl_s)
    original_make = publisher.make

    def make_and_remember() -> tuple[Offer, bytes]:
        offer, data = original_make()
        recent[offer.seq] = offer
        while len(recent) > 16:  # bounded: older quotes of our own offer are stale anyway
            recent.popitem(last=False)
        return offer, data

    publisher.make = make_and_remember  # type: ignore[method-assign]
    agreements = AgreementStore()
    limits_cap = ResourceLimits(memory_bytes=2 * 1024**3, cpus=2.0, pids=256,
                                time_limit_s=24 * 3600.0)
    on_running = _billing_hook(rt, nursery, ledger_setup[0]) if ledger_setup else None
    jobs = JobServer(key, agreements, executor_for=executors.get, limits_cap=limits_cap,
                     clock=wall_clock, nonce=new_nonce, on_running=on_running, deadline_clock=deadline_clock,
                     blobs=rt.extra["blobs"], node=node, transfer_root=config.data_dir / "transfers")
    verifier: EscrowVerifier
    if ledger_setup is not None:
        verifier = LedgerEscrowVerifier(ledger_setup[0], mint)
    else:
        verifier = RefuseAll()
    negotiator = ProviderNegotiator(
        key,
        ProviderPolicy(price_floor_per_gpu_minute=config.price_per_gpu_minute,
                       executors=offered, allowed_images=config.allowed_images,
                       max_concurrent_jobs=config.max_concurrent_jobs, start_window_s=config.start_window_s),
        offer_for_seq=recent.get, verifier=verifier, agreements=agreements,
        running_jobs=lambda: len(jobs.running), clock=wall_clock, nonce=new_nonce,
        deadline_clock=deadline_clock, ledger_speed=ledger_setup[2].speed if ledger_setup else 1,
    )
    node.set_handler(NEGOTIATE_PROTOCOL, negotiator.handle, max_frame_bytes=MAX_FRAME_BYTES,
                     read_timeout_s=10.0, handler_timeout_s=60.0)
    # a job stream lives as long as the job (bounded by the agreement's max minutes)
    node.set_handler(JOB_PROTOCOL, jobs.handle, max_frame_bytes=MAX_FRAME_BYTES,
                     read_timeout_s=10.0, handler_timeout_s=24 * 3600.0 + 60)
    rt.publisher, rt.negotiator, rt.jobs = publisher, negotiator, jobs


def _billing_hook(rt: NodeRuntime, nursery: trio.Nursery, ledger: Any) -> OnRunning:
    """When a job starts: start its escrow, claim periodically, stop it when the money runs out,
    settle at the end; every receipt is recorded per rental (earnings)."""
    config = rt.config
    policy = BillingPolicy(claim_interval_s=config.claim_interval_s, grace_s=config.billing_grace_s,
                           poll_interval_s=config.billing_poll_s)
    #: rate per escrow, so paid-out amounts convert to minutes for the metrics (bounded by the
    #: number of rentals this process served)
    rate_of: dict[str, int] = {}

    metrics: NodeMetrics = rt.extra["metrics"]

    async def record(receipt: EscrowReceipt) -> None:
        store = rt.extra.get("store")
        if store is not None:
            await store.record_receipt("provider", receipt)
        metrics.ledger_calls.labels(receipt.action, "ok").inc()
        if receipt.paid or receipt.fee:
            metrics.minutes_billed.inc((receipt.paid + receipt.fee) // max(1, rate_of.get(receipt.escrow.address, 1)))
            metrics.earned.inc(receipt.paid)
        if receipt.action == "claim":
            metrics.claims.labels("ok").inc()
        log.info("escrow %s: %s paid %d fee %d refunded %d", receipt.escrow.address[:8], receipt.action,
                 receipt.paid, receipt.fee, receipt.refunded)

    async def bill(agreement: Agreement, stop: Callable[[str], Awaitable[None]], job_done: trio.Event) -> None:
        terms = agreement.terms
        rate_of[terms.escrow.address] = terms.rate_per_minute
        handle = EscrowHandle(ledger=terms.escrow.ledger, address=terms.escrow.address, renter=terms.renter,
                              provider=terms.provider, rental_id=terms.escrow.rental_id)
        try:
            result = await provider_billing(ledger, handle, job_done=job_done, stop_job=stop, policy=policy,
                                            record=record)
        except ContractsError as exc:  # could not even start the escrow: the renter must not run free
            metrics.ledger_calls.labels("start", "error").inc()
            log.error("escrow %s could not be started (%s); stopping the job", handle.address[:8], exc)
            await stop(f"escrow could not be started: {exc}")
            return
        finally:
            rate_of.pop(handle.address, None)
        log.info("rental %s settled: earned %d in %d claim(s)%s", handle.address[:8], result.earned,
                 result.claims, f"; stopped: {result.stopped_for}" if result.stopped_for else "")

    def on_running(agreement: Agreement, stop: Callable[[str], Awaitable[None]], job_done: trio.Event) -> None:
        nursery.start_soon(bill, agreement, stop, job_done)

    return on_running
