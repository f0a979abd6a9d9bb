"""A provider's offering, assembled once: inventory, job service, publisher, negotiator, job server.

Theory of operation (``start_offering``, called by ``app.run_node`` for a provider): read the
GPU source once and build the :class:`~dgpu.node.services.inventory.Inventory` on the ledger's
clock (agreements' start deadlines are set on it); open the executors this machine can run,
behind the durable job service (leases of jobs still running after a restart are restored
before reconcile, and every lease is released when its job reaches a final state); then the
offer publisher (terms + inventory), the negotiator (reads the publisher's recent offers and
pause, leases from the inventory, checks escrows on the ledger) and the job server (runs each
agreement's job on its leased GPUs, bills it through the ledger). Returns None, with a warning
saying why, when there is nothing to offer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from dgpu.node.adapters.p2p import P2PNode
from dgpu.node.adapters.store import Store
from dgpu.node.clock import new_nonce, wall_clock, wall_clock_ms
from dgpu.node.config import DEV_MINT, NodeConfig
from dgpu.node.errors import ExecutionError
from dgpu.node.metrics import NodeMetrics
from dgpu.node.ports.execution import Executor as ExecutorPort
from dgpu.node.ports.execution import JobSpec, ResourceLimits
from dgpu.node.ports.gpu import GpuSource
from dgpu.node.ports.store import JobRecord
from dgpu.node.services.billing import (
    BillingPolicy,
    LedgerEscrowGate,
    LedgerEscrowVerifier,
    LedgerTime,
    handle_of,
    provider_billing,
)
from dgpu.node.services.blobs import BlobShelf
from dgpu.node.services.durable import DurableExecutor
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.job_stream import ExecutorLike, JobServer, OnRunning
from dgpu.node.services.jobs import JobService
from dgpu.node.services.meter import Meter
from dgpu.node.services.negotiation import (
    Abandoners,
    AgreementStore,
    EscrowVerifier,
    ProviderNegotiator,
    ProviderPolicy,
    RefuseAll,
)
from dgpu.node.services.offers import OfferPublisher, OfferTerms
from dgpu.protocol.ids import JOB_PROTOCOL, MAX_FRAME_BYTES, NEGOTIATE_PROTOCOL, OFFERS_TOPIC
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.ledger import EscrowLedger, EscrowReceipt
from dgpu.protocol.messages import Agreement, Executor, JobState

__all__ = ["Offering", "start_offering"]

log = logging.getLogger(__name__)

#: the most one job may take, whatever it asks (the executors clamp every job to this)
LIMITS_CAP = ResourceLimits(memory_bytes=2 * 1024**3, cpus=2.0, pids=256, time_limit_s=24 * 3600.0)


@dataclass(frozen=True)
class Offering:
    """The services of a provider that has something to offer."""

    inventory: Inventory
    publisher: OfferPublisher
    negotiator: ProviderNegotiator
    jobs: JobServer
    store: Store


async def _executors(config: NodeConfig, key: SigningKey, *, store: Store, source: GpuSource,
                     inventory: Inventory, nursery: trio.Nursery) -> dict[Executor, ExecutorLike]:
    """The executors this provider can really run, each behind the durable job service.

    Jobs go through :class:`JobService` (SQLite lifecycle, per-minute meter of the leased GPUs,
    reconcile after a restart). Docker is offered only when an engine answers; the script
    executor only when the provider opted in (``--executor script``) — its weaker isolation is
    stated in the logs."""
    raw: dict[str, ExecutorPort] = {}
    if Executor.DOCKER in config.executors:
        from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy

        try:
            raw["docker"] = await DockerExecutor.connect(DockerPolicy(
                workspace_root=config.data_dir / "docker", instance=key.public_key.wallet[:16],
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

    async def release_when_final(record: JobRecord) -> None:
        if record.state.terminal:
            inventory.release(record.job_id)

    service = JobService(store, raw, Meter(store, source, interval_s=config.meter_interval_s),
                         on_status=release_when_final)
    inventory.restore((r.job_id, JobSpec.from_json(r.spec).gpu_uuids)
                      for r in await store.jobs_in([JobState.STARTING, JobState.RUNNING]))
    report = await service.reconcile(nursery)
    if report.reattached or report.finished or report.failed:
        log.info("reconciled after restart: %d re-attached, %d finished meanwhile, %d failed",
                 len(report.reattached), len(report.finished), len(report.failed))
    return {Executor(name): DurableExecutor(service, store, name, nursery) for name in raw}


async def start_offering(config: NodeConfig, key: SigningKey, node: P2PNode, *, source: GpuSource,
                         shelf: BlobShelf, ledger: EscrowLedger | None, store: Store, metrics: NodeMetrics,
                         nursery: trio.Nursery) -> Offering | None:
    """Build the provider's services and serve its protocols; None when it has nothing to offer."""
    scan = await source.inventory()
    if not scan.gpus:
        log.warning("provider has no GPU inventory (%s); it will not publish", scan.message)
        return None
    if ledger is None:
        log.warning("no ledger configured (--ledger-url): every escrow will be refused")
        mint, ledger_name, ledger_time = DEV_MINT, "none", None
    else:
        mint, ledger_name, ledger_time = (await ledger.mint_info()).address, ledger.ledger, LedgerTime()
        await ledger_time.sync(ledger)
    deadline_clock = ledger_time.now if ledger_time is not None else wall_clock
    inventory = Inventory(scan.gpus, owner=key.public_key.wallet, price_per_gpu_minute=config.price_per_gpu_minute,
                          max_jobs=config.max_concurrent_jobs, clock=deadline_clock)
    log.info("GPU inventory: %s", scan.message)
    executors = await _executors(config, key, store=store, source=source, inventory=inventory, nursery=nursery)
    offered = tuple(e for e in config.executors if e in executors)
    if not offered:
        log.warning("no executor can run jobs here; the provider will not publish an offer")
        return None

    async def publish(data: bytes) -> None:
        await node.publish(OFFERS_TOPIC, data)

    publisher = OfferPublisher(
        key, inventory, OfferTerms(mint=mint, ledger=ledger_name, region=config.region, executors=offered,
                                   addrs=tuple(node.addrs)),
        publish, clock=wall_clock, clock_ms=wall_clock_ms, ttl_s=config.offer_ttl_s)
    agreements = AgreementStore()
    abandoners = Abandoners(clock=wall_clock)
    on_running, gate = (_billing(config, ledger, mint, store, metrics, nursery=nursery) if ledger is not None
                        else (None, None))
    jobs = JobServer(key, agreements, inventory, executor_for=executors.get, limits_cap=LIMITS_CAP,
                     clock=wall_clock, nonce=new_nonce, on_running=on_running, deadline_clock=deadline_clock,
                     blobs=shelf, node=node, transfer_root=config.data_dir / "transfers", escrow=gate,
                     on_abandoned=abandoners.abandoned)
    verifier: EscrowVerifier = LedgerEscrowVerifier(ledger, mint) if ledger is not None else RefuseAll()
    negotiator = ProviderNegotiator(
        key, ProviderPolicy(executors=offered, allowed_images=config.allowed_images,
                            start_window_s=config.start_window_s),
        offers=publisher, inventory=inventory, verifier=verifier, agreements=agreements, clock=wall_clock,
        nonce=new_nonce, deadline_clock=deadline_clock, abandoners=abandoners,
        ledger_speed=ledger_time.speed if ledger_time is not None else 1)
    node.set_handler(NEGOTIATE_PROTOCOL, negotiator.handle, max_frame_bytes=MAX_FRAME_BYTES,
                     read_timeout_s=10.0, handler_timeout_s=60.0)
    # a job stream lives as long as the job (bounded by the agreement's max minutes)
    node.set_handler(JOB_PROTOCOL, jobs.handle, max_frame_bytes=MAX_FRAME_BYTES,
                     read_timeout_s=10.0, handler_timeout_s=24 * 3600.0 + 60)
    return Offering(inventory, publisher, negotiator, jobs, store)


def _billing(config: NodeConfig, ledger: EscrowLedger, mint: str, store: Store, metrics: NodeMetrics, *,
             nursery: trio.Nursery) -> tuple[OnRunning, LedgerEscrowGate]:
    """The escrow gate (re-read at submit, started before the job) and, once the job runs, its
    billing: claim periodically, stop it when the escrow is closed or runs out, settle at the end;
    every receipt is recorded per rental (earnings)."""
    policy = BillingPolicy(claim_interval_s=config.claim_interval_s, grace_s=config.billing_grace_s,
                           poll_interval_s=config.billing_poll_s)
    #: rate per escrow, so paid-out amounts convert to minutes for the metrics (bounded by the
    #: number of rentals this process serves at once)
    rate_of: dict[str, int] = {}

    async def record(receipt: EscrowReceipt) -> None:
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
        handle = handle_of(terms)
        try:  # the job server started the escrow (and saw it started) before the job
            result = await provider_billing(ledger, handle, job_done=job_done, stop_job=stop, policy=policy,
                                            record=record, already_started=True)
        finally:
            rate_of.pop(handle.address, None)
        log.info("rental %s settled: earned %d in %d claim(s)%s", handle.address[:8], result.earned,
                 result.claims, f"; stopped: {result.stopped_for}" if result.stopped_for else "")

    def on_running(agreement: Agreement, stop: Callable[[str], Awaitable[None]], job_done: trio.Event) -> None:
        nursery.start_soon(bill, agreement, stop, job_done)

    return on_running, LedgerEscrowGate(ledger, mint, record)
