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

from dgpu.node.adapters.executor import ResourceLimits
from dgpu.node.adapters.keystore import load_or_create
from dgpu.node.adapters.p2p import Discovery, P2PConfig, P2PNode, open_node
from dgpu.node.adapters.p2p_pubsub import GossipConfig
from dgpu.node.config import DEV_MINT, NodeConfig
from dgpu.node.errors import NetworkError
from dgpu.node.services.job_stream import ExecutorLike, JobServer
from dgpu.node.services.negotiation import (
    AcceptUnfundedPlaceholder,
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
from dgpu.protocol.messages import Executor, Offer

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

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


async def _executors(config: NodeConfig, nursery: trio.Nursery
                     ) -> Callable[[Executor], ExecutorLike | None]:
    """The executors this provider offers: the execution layer's, else our process runner."""
    table: dict[Executor, ExecutorLike] = {}
    if Executor.SCRIPT in config.executors:
        try:
            from dgpu.node.adapters.script_executor import ScriptExecutor, ScriptPolicy

            table[Executor.SCRIPT] = await ScriptExecutor.create(
                ScriptPolicy(enabled=True, scratch_root=config.data_dir / "jobs"))
        except (ImportError, OSError) as exc:
            from dgpu.node.adapters.process_executor import ProcessExecutor

            log.warning("script executor unavailable (%s); using the local process runner", exc)
            runner = ProcessExecutor(config.data_dir)
            await nursery.start(runner.run)
            table[Executor.SCRIPT] = runner
    if Executor.DOCKER in config.executors:
        # the Docker executor needs an engine client and a pull policy; wiring it belongs to
        # the job service (node/services/jobs.py). Until then docker requests get FAILED.
        log.warning("docker jobs are advertised but not wired into the job stream yet")
    return table.get


async def _watch_peers(rt: NodeRuntime) -> None:
    """Republish our offer when new peers join the topic (they missed the last one)."""
    seen: set[str] = set()
    while True:
        peers = set(rt.node.topic_peers(OFFERS_TOPIC))
        if peers - seen and rt.publisher is not None:
            rt.publisher.changed()
        seen = peers
        await trio.sleep(0.5)


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
                   task_status: TaskStatus[NodeRuntime] = trio.TASK_STATUS_IGNORED) -> None:
    key = load_or_create(config.key_file, passphrase=os.environ.get(config.passphrase_env))
    p2p_config = P2PConfig(
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        gossip=GossipConfig(max_data_bytes=MAX_OFFER_BYTES),
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
        if config.role == "provider":
            await _start_provider(rt, nursery)
        await nursery.start(discovery.run)
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
        task_status.started(rt)
        if main is not None:
            await main(rt)
            nursery.cancel_scope.cancel()


async def _start_provider(rt: NodeRuntime, nursery: trio.Nursery) -> None:
    config, key, node = rt.config, rt.key, rt.node
    if not config.gpus:
        log.warning("provider has no GPU inventory; its offer lists none and it will not publish")
        return
    template = Offer(
        provider=key.public_key.wallet, addrs=tuple(node.addrs)[:8], gpus=config.gpus,
        price_per_minute=config.price_per_gpu_minute, mint=DEV_MINT, ledger="dev",
        region=config.region, executors=config.executors, seq=0, issued_at=0, expires_at=1,
    )
    # the offers we published recently, by seq: a request may quote one a republish ago
    recent: OrderedDict[int, Offer] = OrderedDict()

    async def publish(data: bytes) -> None:
        await node.publish(OFFERS_TOPIC, data)

    publisher = OfferPublisher(key, lambda: template, publish, clock=wall_clock,
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
    executor_for = await _executors(config, nursery)
    limits_cap = ResourceLimits(memory_bytes=2 * 1024**3, cpus=2.0, pids=256,
                                time_limit_s=24 * 3600.0)
    jobs = JobServer(key, agreements, executor_for=executor_for, limits_cap=limits_cap,
                     clock=wall_clock, nonce=new_nonce)
    verifier: EscrowVerifier = (AcceptUnfundedPlaceholder() if config.allow_unfunded_escrow
                                else RefuseAll())
    negotiator = ProviderNegotiator(
        key,
        ProviderPolicy(price_floor_per_gpu_minute=config.price_per_gpu_minute,
                       executors=config.executors, allowed_images=config.allowed_images,
                       max_concurrent_jobs=config.max_concurrent_jobs),
        offer_for_seq=recent.get, verifier=verifier, agreements=agreements,
        running_jobs=lambda: len(jobs.running), clock=wall_clock, nonce=new_nonce,
    )
    node.set_handler(NEGOTIATE_PROTOCOL, negotiator.handle, max_frame_bytes=MAX_FRAME_BYTES,
                     read_timeout_s=10.0, handler_timeout_s=60.0)
    # a job stream lives as long as the job (bounded by the agreement's max minutes)
    node.set_handler(JOB_PROTOCOL, jobs.handle, max_frame_bytes=MAX_FRAME_BYTES,
                     read_timeout_s=10.0, handler_timeout_s=24 * 3600.0 + 60)
    rt.publisher, rt.negotiator, rt.jobs = publisher, negotiator, jobs
