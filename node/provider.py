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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import trio

from dgpu.node.adapters.p2p import P2PNode
from dgpu.node.adapters.result_push import HttpResultPusher
from dgpu.node.adapters.store import Store
from dgpu.node.clock import new_nonce, wall_clock, wall_clock_ms
from dgpu.node.config import DEV_MINT, NodeConfig
from dgpu.node.errors import ConfigError, ExecutionError
from dgpu.node.metrics import NodeMetrics
from dgpu.node.ports.execution import Executor as ExecutorPort
from dgpu.node.ports.execution import JobSpec, ResourceLimits
from dgpu.node.ports.gpu import GpuScan, GpuSource
from dgpu.node.ports.settlement import SettlementStore
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
from dgpu.node.services.forward import AccessPolicy, ForwardServer, Grants
from dgpu.node.services.gpu_monitor import GpuMonitor
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.job_stream import ExecutorLike, JobServer, OnRunning
from dgpu.node.services.jobs import JobService
from dgpu.node.services.ledger_retry import wait_for_ledger
from dgpu.node.services.meter import Meter, build_usage_receipts
from dgpu.node.services.negotiation import (
    Abandoners,
    AgreementStore,
    EscrowVerifier,
    ProviderNegotiator,
    ProviderPolicy,
    RefuseAll,
)
from dgpu.node.services.offers import OfferBook
from dgpu.node.services.pricing import MarketPricer, engine_basis
from dgpu.node.services.publisher import OfferPublisher, OfferTerms
from dgpu.node.services.settlement import Settlements
from dgpu.node.services.shell import ShellServer
from dgpu.protocol.ids import (
    FORWARD_PROTOCOL,
    JOB_PROTOCOL,
    JOB_PROTOCOL_V2,
    MAX_FRAME_BYTES,
    NEGOTIATE_PROTOCOL,
    OFFERS_TOPIC,
    SHELL_PROTOCOL,
)
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.ledger import EscrowLedger, EscrowReceipt
from dgpu.protocol.messages import Agreement, Executor, JobState, PriceBasis
from dgpu.protocol.pricing import MultiplierBounds

__all__ = ["Offering", "meter_minute_s", "start_offering"]

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
    #: the GPUs' latest samples and leases (``/metrics``)
    monitor: GpuMonitor
    #: rate per escrow of the rentals being billed now (owned by the billing task; read here)
    billing: Mapping[str, int]
    #: the ledger actions that end its rentals, kept until they land (None without a ledger)
    settlements: Settlements | None = None


async def _executors(config: NodeConfig, key: SigningKey, *, store: Store, source: GpuSource,
                     inventory: Inventory, meter_interval_s: float, metrics: NodeMetrics,
                     nursery: trio.Nursery) -> tuple[dict[Executor, ExecutorLike], JobService]:
    """The executors this provider can really run, each behind the durable job service.

    Jobs go through :class:`JobService` (SQLite lifecycle, per-minute meter of the leased GPUs,
    reconcile after a restart). Docker is offered only when an engine answers; the script
    executor only when the provider opted in (``--executor script``) — its weaker isolation is
    stated in the logs."""
    raw: dict[str, ExecutorPort] = {}
    if Executor.DOCKER in config.executors:
        from dgpu.node.adapters.docker_executor import DockerExecutor, DockerPolicy

        try:
            docker_executor = await DockerExecutor.connect(DockerPolicy(
                workspace_root=config.data_dir / "docker", instance=key.public_key.wallet[:16],
                allowed_images=frozenset(config.allowed_images), max_concurrent_jobs=inventory.max_jobs))
        except ExecutionError as exc:
            log.warning("docker executor unavailable (%s); not offering docker jobs", exc)
        else:
            if not inventory.simulated and not await docker_executor.has_nvidia_runtime():
                await docker_executor.close()
                raise ConfigError(
                    "GPUs are offered for Docker jobs but the Docker engine has no NVIDIA runtime: install "
                    "nvidia-container-toolkit and run `nvidia-ctk runtime configure --runtime=docker` (then "
                    "restart dockerd), or offer script jobs only (--executor script)")
            raw["docker"] = docker_executor
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

    service = JobService(store, raw, Meter(store, source, interval_s=meter_interval_s, observer=metrics),
                         on_status=release_when_final)
    inventory.restore((r.job_id, JobSpec.from_json(r.spec).gpu_uuids)
                      for r in await store.jobs_in([JobState.STARTING, JobState.RUNNING]))
    report = await service.reconcile(nursery)
    if report.reattached or report.finished or report.failed:
        log.info("reconciled after restart: %d re-attached, %d finished meanwhile, %d failed",
                 len(report.reattached), len(report.finished), len(report.failed))
    return {Executor(name): DurableExecutor(service, store, name, nursery) for name in raw}, service


def meter_minute_s(config: NodeConfig, ledger_speed: int) -> float:
    """Wall seconds per metered minute: the ledger's minute (60 s / its clock speed), so receipts and
    the escrow's accrual count the same minutes; ``--meter-interval`` overrides it (tests)."""
    return config.meter_interval_s if config.meter_interval_s is not None else 60.0 / max(1, ledger_speed)


def _ledger_host(config: NodeConfig) -> str:
    """Where the ledger is, for logs: host and port only (an RPC URL's path or query may hold an
    API key)."""
    parts = urlsplit((config.solana_rpc if config.ledger == "solana" else config.ledger_url) or "")
    if parts.hostname is None:
        return ""
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname


def _initial_price(config: NodeConfig, scan: GpuScan, decimals: int) -> tuple[int, PriceBasis]:
    """The engine's price at multiplier 1 (the market pricer adjusts it before the first publication),
    or the provider's ``--price`` override with the engine's inputs beside it."""
    rate, basis = engine_basis(scan.gpus, decimals=decimals)
    if config.price_per_gpu_minute is None:
        return rate, basis
    return config.price_per_gpu_minute, basis.model_copy(update={"source": "override"})


async def start_offering(config: NodeConfig, key: SigningKey, node: P2PNode, *, source: GpuSource, scan: GpuScan,
                         shelf: BlobShelf, book: OfferBook, ledger: EscrowLedger | None, store: Store,
                         metrics: NodeMetrics, nursery: trio.Nursery,
                         settle_store: SettlementStore | None = None) -> Offering | None:
    """Build the provider's services and serve its protocols for the GPUs of ``scan`` (not empty:
    ``app.scan_offered``); None when no executor can run jobs here."""
    if ledger is None:
        log.warning("no ledger configured (--ledger-url): every escrow will be refused")
        mint, decimals, ledger_name, ledger_time = DEV_MINT, 6, "none", None
    else:
        # a ledger down at start (an outage, a node not up yet) is waited for, not fatal
        where = _ledger_host(config)
        mint_info = await wait_for_ledger(ledger.mint_info, what="reading the ledger's mint", url=where)
        mint, decimals, ledger_name, ledger_time = mint_info.address, mint_info.decimals, ledger.ledger, LedgerTime()
        if config.mint is not None and mint != config.mint:
            raise ConfigError(f"the ledger's program pins mint {mint}, not the configured {config.mint}")
        await wait_for_ledger(lambda: ledger_time.sync(ledger), what="reading the ledger's clock", url=where)
    deadline_clock = ledger_time.now if ledger_time is not None else wall_clock
    speed = ledger_time.speed if ledger_time is not None else 1
    meter_interval_s = meter_minute_s(config, speed)
    price, pricing = _initial_price(config, scan, decimals)
    inventory = Inventory(scan.gpus, owner=key.public_key.wallet, price_per_gpu_minute=price, pricing=pricing,
                          max_jobs=config.max_concurrent_jobs or min(64, len(scan.gpus)), clock=deadline_clock)
    log.info("GPU inventory: %s; %d job slot(s); price %d per GPU-minute (%s)", scan.message, inventory.max_jobs,
             price, pricing.source)
    executors, service = await _executors(config, key, store=store, source=source, inventory=inventory,
                                          meter_interval_s=meter_interval_s, metrics=metrics, nursery=nursery)
    offered = tuple(e for e in config.executors if e in executors)
    if not offered:
        log.warning("no executor can run jobs here; the provider will not publish an offer")
        return None

    async def publish(data: bytes) -> None:
        await node.publish(OFFERS_TOPIC, data)

    def requests_seen() -> int:  # the negotiator is built below; the first reprice is at publication
        return negotiator.requests_received

    pricer = MarketPricer(inventory, book, own_wallet=key.public_key.wallet, decimals=decimals,
                          requests_seen=requests_seen, clock=wall_clock, window_s=config.price_window_s,
                          bounds=MultiplierBounds(config.price_multiplier_low, config.price_multiplier_high))
    publisher = OfferPublisher(
        key, inventory, OfferTerms(mint=mint, ledger=ledger_name, region=config.region, executors=offered,
                                   addrs=tuple(node.addrs), forward=config.allow_forward,
                                   shell=config.allow_shell, images=config.allowed_images),
        publish, clock=wall_clock, clock_ms=wall_clock_ms, ttl_s=config.offer_ttl_s, reprice=pricer.reprice)
    agreements = AgreementStore()
    abandoners = Abandoners(clock=wall_clock)
    billing: Mapping[str, int] = {}
    on_running, gate, settlements = None, None, None
    if ledger is not None and ledger_time is not None:
        on_running, gate, billing, settlements = _billing(config, ledger, mint, store, metrics, nursery=nursery,
                                                          settle_store=settle_store, ledger_now=ledger_time.now)
        if settlements is not None:
            await nursery.start(settlements.run)
    jobs = JobServer(key, agreements, inventory, executor_for=executors.get, limits_cap=LIMITS_CAP,
                     clock=wall_clock, nonce=new_nonce, on_running=on_running, deadline_clock=deadline_clock,
                     blobs=shelf, node=node, transfer_root=config.data_dir / "transfers", escrow=gate,
                     on_abandoned=abandoners.abandoned, nursery=nursery,
                     grants=_serve_access(config, key, node, service), pusher=HttpResultPusher())
    verifier: EscrowVerifier = LedgerEscrowVerifier(ledger, mint) if ledger is not None else RefuseAll()
    negotiator = ProviderNegotiator(
        key, ProviderPolicy(executors=offered, allowed_images=config.allowed_images,
                            start_window_s=config.start_window_s, allow_forward=config.allow_forward),
        offers=publisher, inventory=inventory, verifier=verifier, agreements=agreements, clock=wall_clock,
        nonce=new_nonce, deadline_clock=deadline_clock, abandoners=abandoners,
        ledger_speed=speed)
    node.set_handler(NEGOTIATE_PROTOCOL, negotiator.handle, max_frame_bytes=MAX_FRAME_BYTES,
                     read_timeout_s=10.0, handler_timeout_s=60.0)
    # a job stream lives at most as long as the job (bounded by the agreement's max minutes)
    for protocol, handler in ((JOB_PROTOCOL, jobs.handle), (JOB_PROTOCOL_V2, jobs.handle_v2)):
        node.set_handler(protocol, handler, max_frame_bytes=MAX_FRAME_BYTES,
                         read_timeout_s=10.0, handler_timeout_s=24 * 3600.0 + 60)
    monitor = GpuMonitor(inventory, source)
    await nursery.start(monitor.run)
    return Offering(inventory, publisher, negotiator, jobs, store, monitor, billing, settlements)


def _serve_access(config: NodeConfig, key: SigningKey, node: P2PNode, service: JobService) -> Grants:
    """Forwarded ports and shells into running jobs, as the provider's policy allows (off by default:
    a refusal then says so). Each connection lives as long as its job at most."""
    from dgpu.node.adapters.job_access import LocalJobAccess

    grants = Grants(AccessPolicy(allow_forward=config.allow_forward, allow_shell=config.allow_shell,
                                 max_connections=config.access_max_connections,
                                 bytes_per_second=config.access_bytes_per_second,
                                 idle_timeout_s=config.access_idle_timeout_s))
    access = LocalJobAccess(service.handle_of)
    for protocol, server in ((FORWARD_PROTOCOL, ForwardServer), (SHELL_PROTOCOL, ShellServer)):
        node.set_handler(protocol, server(key, grants, access, clock=wall_clock, nonce=new_nonce).handle,
                         max_frame_bytes=MAX_FRAME_BYTES, read_timeout_s=10.0, handler_timeout_s=24 * 3600.0 + 60)
    return grants


def _billing(config: NodeConfig, ledger: EscrowLedger, mint: str, store: Store, metrics: NodeMetrics, *,
             nursery: trio.Nursery, settle_store: SettlementStore | None, ledger_now: Callable[[], int]
             ) -> tuple[OnRunning, LedgerEscrowGate, Mapping[str, int], Settlements | None]:
    """The escrow gate (re-read at submit, started before the job) and, once the job runs, its
    billing: claim periodically, stop it when the escrow is closed or runs out, settle at the end
    (through the settlements: recorded first, retried until it lands); every receipt is recorded
    per rental (earnings, metrics). Also the rentals being billed."""
    policy = BillingPolicy(claim_interval_s=config.claim_interval_s, grace_s=config.billing_grace_s,
                           poll_interval_s=config.billing_poll_s)
    #: rate per escrow, so paid-out amounts convert to minutes for the metrics (bounded by the
    #: number of rentals this process serves at once)
    rate_of: dict[str, int] = {}

    async def record(receipt: EscrowReceipt) -> None:
        await store.record_receipt("provider", receipt)
        metrics.receipt(receipt, rate_of.get(receipt.escrow.address))
        log.info("escrow %s: %s paid %d fee %d refunded %d", receipt.escrow.address[:8], receipt.action,
                 receipt.paid, receipt.fee, receipt.refunded)

    settlements = (Settlements(ledger, settle_store, ledger_now=ledger_now, record=record,
                               retry_max_s=config.settle_retry_max_s) if settle_store is not None else None)

    async def bill(agreement: Agreement, stop: Callable[[str], Awaitable[None]], job_done: trio.Event) -> None:
        terms = agreement.terms
        rate_of[terms.escrow.address] = terms.rate_per_minute
        handle = handle_of(terms)
        try:  # the job server started the escrow (and saw it started) before the job
            result = await provider_billing(ledger, handle, job_done=job_done, stop_job=stop, policy=policy,
                                            record=record, already_started=True,
                                            receipts=partial(build_usage_receipts, store, agreement.agreement_id,
                                                             agreement.agreement_id),
                                            settlements=settlements)
        finally:
            rate_of.pop(handle.address, None)
        metrics.rental_ended(result.stopped_for)
        log.info("rental %s %s: earned %d in %d claim(s)%s", handle.address[:8],
                 "settled" if result.settled else "billed, its settlement pending (retried until it lands)",
                 result.earned, result.claims, f"; stopped: {result.stopped_for}" if result.stopped_for else "")

    def on_running(agreement: Agreement, stop: Callable[[str], Awaitable[None]], job_done: trio.Event) -> None:
        nursery.start_soon(bill, agreement, stop, job_done)

    return on_running, LedgerEscrowGate(ledger, mint, record, settlements), rate_of, settlements
