"""The renter workflow: find offers, rent (negotiate and fund the escrow), run, settle.

``Renter`` works over one node's network, key, offer book and blob shelf, and the renter's
ledger (``EscrowLedger``). ``rent`` negotiates with a provider and locks the deposit in escrow
before accepting; ``Rental.run`` submits the job, streams its logs, watches the escrow
(warning, optional top-up), and when the job ends makes sure the escrow is settled, so every
unaccrued minute comes back. ``dgpu.client.Client`` is a ``Renter`` over an in-process node;
the node's local HTTP API runs its jobs through one too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dgpu.node.errors import JobLostError, NetworkError, RejectedError, StreamError
from dgpu.node.ports.store import RentalBook, RentalRecord
from dgpu.node.services.billing import BillingPolicy, handle_of, renter_billing
from dgpu.node.services.blobs import BlobError, BlobShelf, Progress, fetch_blob, safe_unpack
from dgpu.node.services.forward_client import AccessTarget, ForwardInfo, PortForward, ShellSession, open_shell
from dgpu.node.services.job_renter import JobOutcome, run_job
from dgpu.node.services.negotiation import negotiate
from dgpu.node.services.offers import OfferBook, OfferQuery
from dgpu.node.services.renter.access import as_forwards, serve_forwards
from dgpu.node.services.renter.errors import (
    EscrowFailed,
    JobFailed,
    NegotiationFailed,
    NoOffersError,
    NotConnected,
    RenterError,
)
from dgpu.node.services.renter.funder import LedgerFunder
from dgpu.node.services.renter.inputs import resolve_input, resolve_roots
from dgpu.node.services.renter.offer_info import OfferInfo
from dgpu.node.services.renter.result import RentalResult, final_settlement
from dgpu.node.services.renter.tracking import RentalTracker
from dgpu.node.services.settlement import Settlements, settle_rental
from dgpu.protocol.escrow import RentalIds
from dgpu.protocol.keys import PublicKey, SigningKey
from dgpu.protocol.ledger import (
    ContractsError,
    EscrowHandle,
    EscrowLedger,
    EscrowNotFound,
    EscrowReceipt,
    EscrowRefused,
    EscrowView,
    Settlement,
)
from dgpu.protocol.messages import Agreement, Executor, InputRef, JobState, JobStatus, LogChunk, ResultRef
from dgpu.protocol.pricing import DEFAULT_FEE_BPS, Estimate, estimate

if TYPE_CHECKING:
    # the network the workflow dials providers on; the concrete libp2p node until the
    # services' network port (node/ports.py) replaces it
    from dgpu.node.ports.access import LocalListen
    from dgpu.node.ports.network import Network

__all__ = ["OfferInfo", "Rental", "RentalResult", "Renter"]

log = logging.getLogger(__name__)

#: how long the renter waits after the job for the provider's settlement before closing itself
SETTLE_WAIT_S = 10.0
#: inputs stay on the renter's shelf this long past the rental's last minute (for a late start)
INPUT_TTL_SLACK_S = 600.0
#: a job stream lost while the job runs on is re-attached this many times in all
REATTACH_ATTEMPTS = 4
#: offers ``rent`` tries, cheapest first, when one cannot be reached or refuses
RENT_ATTEMPTS = 3
#: an unpacked result at most (the provider caps outputs lower; this bounds a hostile archive)
MAX_RESULT_UNPACKED_BYTES = 4 * 1024**3


class Rental:
    """One agreed rental: run it, follow it, top it up, or close it early."""

    def __init__(self, renter: Renter, agreement: Agreement, provider_peer: str, handle: EscrowHandle | None, *,
                 tracker: RentalTracker | None = None, forwards: Sequence[PortForward] = ()) -> None:
        self.renter = renter
        #: its row in the renter's rental book (where a restarted node re-attaches from)
        self.tracker = tracker or RentalTracker(None, agreement.agreement_id, renter.clock)
        #: the job's ports to reach on 127.0.0.1 while it runs (asked for in the job request)
        self.forwards = tuple(forwards)
        self.agreement = agreement
        self.provider_peer = provider_peer
        self.escrow = handle
        self._cancel = trio.Event()
        self.result: ResultRef | None = None
        #: what our own ``close`` moved (the account itself may be gone afterwards, on Solana)
        self.close_receipt: EscrowReceipt | None = None

    @property
    def id(self) -> str:
        return self.agreement.agreement_id

    @property
    def rate_per_minute(self) -> int:
        return self.agreement.terms.rate_per_minute

    async def run(self, on_log: Callable[[LogChunk], Awaitable[None] | None] | None = None,
                  policy: BillingPolicy | None = None,
                  on_warning: Callable[[int], None] | None = None,
                  on_forward: Callable[[ForwardInfo], None] | None = None) -> RentalResult:
        """Submit the job (or re-attach to it, after a restart) and follow it to the end; the escrow
        is settled before this returns. Cancelled (the node stopping), it leaves the job running
        on the provider, unless the rental was made with ``stop_on_disconnect``.

        While the job runs its ``forwards`` listen on 127.0.0.1 (``on_forward`` is told each one's
        port, or why it could not listen); they close when it ends."""
        renter = self.renter
        first_submit = not self.tracker.submitted
        done, running = trio.Event(), trio.Event()
        warnings: list[int] = []

        def warned(remaining: int) -> None:
            warnings.append(remaining)
            log.warning("rental %s: %d paid minute(s) left", self.id[:12], remaining)
            if on_warning is not None:
                on_warning(remaining)

        failure: RenterError | None = None
        async with trio.open_nursery() as nursery:
            ledger, handle = renter.ledger, self.escrow
            if handle is not None and ledger is not None:
                nursery.start_soon(lambda: renter_billing(ledger, handle,
                                                          policy=policy or renter.billing_policy,
                                                          on_warning=warned, done=done))
            if self.forwards and (listen := renter.listen) is not None:
                nursery.start_soon(lambda: serve_forwards(self.access_target(), self.forwards, listen,
                                                          running=running, done=done, on_forward=on_forward))
            try:
                outcome = await self._follow_job(
                    on_log, on_status=lambda s: running.set() if s.state is JobState.RUNNING else None)
            except (JobLostError, NetworkError) as exc:
                failure = JobFailed(f"job {self.id[:12]} lost: {exc}; the escrow was closed, unused minutes "
                                    "refunded")
                failure.__cause__ = exc
            except RejectedError as exc:
                failure = (NegotiationFailed(f"the provider refused the job: {exc}", exc.code) if first_submit
                           else JobFailed(f"the provider refused the re-attach to {self.id[:12]}: {exc}"))
                failure.__cause__ = exc
            finally:
                done.set()
        if failure is not None:  # raised outside the nursery, so callers see it unwrapped
            await self._recover()
            await self.tracker.ended(None, None)
            raise failure
        final = await self._settled()
        self.result = outcome.result
        await self.tracker.ended(str(outcome.state), outcome.result)
        rental = RentalResult(outcome.state, outcome.exit_code, outcome.reason, outcome.log_chunks, final, warnings,
                              outcome.result, outcome.receipts, await self.settlement(), self.rate_per_minute)
        check = rental.reconciliation
        if check is not None and check.over_accrued:
            log.warning("rental %s: the escrow paid %d minute(s) but only %d were metered (receipts)", self.id[:12],
                        check.claimed, check.metered)
        return rental

    async def _follow_job(self, on_log: Callable[[LogChunk], Awaitable[None] | None] | None, *,
                          on_status: Callable[[JobStatus], None] | None = None) -> JobOutcome:
        """Submit (or re-attach) and follow; a stream lost while the provider still answers is
        re-attached (the job runs on there), from the first log chunk not yet received."""
        renter = self.renter
        for attempt in range(1, REATTACH_ATTEMPTS + 1):
            attach_from = self.tracker.next_run()
            try:
                return await run_job(renter.network, renter.key, self.agreement, self.provider_peer,
                                     clock=renter.clock, nonce=renter.nonce, on_log=self.tracker.sink(on_log),
                                     cancel=self._cancel, attach_from=attach_from, on_status=on_status)
            except (JobLostError, NetworkError) as exc:
                lost = (isinstance(exc, NetworkError) and attach_from is not None) or (
                    type(exc) is JobLostError and isinstance(exc.__cause__, StreamError))
                if not lost or attempt == REATTACH_ATTEMPTS or self._cancel.is_set():
                    raise
                log.info("rental %s: %s; re-attaching (%d/%d)", self.id[:12], exc, attempt, REATTACH_ATTEMPTS - 1)
                await trio.sleep(attempt)  # a reconnect, not a hot loop
        raise AssertionError("unreachable")

    async def download_result(self, dest_dir: Path | str, progress: Progress | None = None) -> list[Path]:
        """Fetch the job's output folder from the provider, verify it and unpack it into ``dest_dir``.

        ``progress(bytes_done, total)`` is called as the archive arrives. Returns the files written.
        Raises RenterError when the job left no result, or the transfer or the archive is refused."""
        dest = Path(dest_dir)
        archive = self.renter.shelf.temp_path()
        try:
            await self.fetch_result_archive(archive, progress)
            return await trio.to_thread.run_sync(
                lambda: safe_unpack(archive, dest, max_total_bytes=MAX_RESULT_UNPACKED_BYTES))
        except BlobError as exc:
            raise RenterError(f"could not unpack the result of {self.id[:12]}: {exc}") from exc
        finally:
            await trio.Path(archive).unlink(missing_ok=True)

    async def fetch_result_archive(self, dest: Path, progress: Progress | None = None) -> int:
        """Fetch the job's result archive (a tar, verified against its content id) to ``dest``."""
        if self.result is None:
            raise RenterError(f"rental {self.id[:12]} has no result (the job did not finish, or kept none)")
        ref = self.result
        renter = self.renter
        renter.check_live()
        try:
            return await fetch_blob(renter.network, self.provider_peer, ref.cid, dest, expected_size=ref.size,
                                    max_bytes=renter.shelf.max_blob_bytes, progress=progress)
        except (BlobError, NetworkError) as exc:
            raise RenterError(f"could not download the result of {self.id[:12]}: {exc}") from exc

    async def _settled(self, wait_s: float = SETTLE_WAIT_S) -> EscrowView | None:
        """Wait for the provider's settlement; close it ourselves (durably) if it does not come.
        Raises LedgerUnavailable when the ledger cannot be reached to close it."""
        ledger = self.renter.ledger
        if self.escrow is None or ledger is None:
            return None
        return await settle_rental(ledger, self.escrow, self.renter.settlements, wait_s=wait_s)

    async def _recover(self) -> EscrowView | None:
        """Close the escrow from our side now: accrued minutes paid, the rest refunded."""
        return await self._settled(wait_s=0)

    def access_target(self) -> AccessTarget:
        """The running job as this renter reaches into it (forwarded ports, shells)."""
        r = self.renter
        provider = PublicKey.from_wallet(self.agreement.terms.provider)
        return AccessTarget(r.network, r.key, self.provider_peer, provider, self.id, r.clock, r.nonce)

    async def shell(self, argv: Sequence[str] = (), *, rows: int = 24, cols: int = 80,
                    tty: bool = True) -> ShellSession:
        """A terminal in the running job (the provider must allow shells); RejectedError if refused."""
        return await open_shell(self.access_target(), argv, rows=rows, cols=cols, tty=tty)

    async def settlement(self) -> Settlement | None:
        """The escrow's whole accounting once settled, from the ledger's transactions (None before)."""
        ledger = self.renter.ledger
        if self.escrow is None or ledger is None:
            await trio.lowlevel.checkpoint()  # a caller may poll this: it must not starve the node
            return None
        return await final_settlement(ledger, self.escrow)

    def cancel(self) -> None:
        """Ask the provider to stop the job; ``run`` returns once it has (state ``cancelled``)."""
        self._cancel.set()

    async def top_up(self, minutes: int) -> EscrowView:
        """Buy ``minutes`` more at the agreed rate (only before the escrow expires)."""
        ledger, handle = self._escrow()
        try:
            await ledger.top_up(handle, minutes)
        except EscrowRefused as exc:
            raise EscrowFailed("top-up refused", exc.code.value) from exc
        return await ledger.fetch(handle.address)

    async def close(self) -> EscrowView | None:
        """Stop paying now: accrued minutes go to the provider, every other minute comes back.

        The escrow as closed, or ``None`` where the ledger reclaims a closed escrow's account
        (Solana): then ``close_receipt`` says what the close moved, :meth:`settlement` the whole."""
        ledger, handle = self._escrow()
        try:
            self.close_receipt = await ledger.close(handle)
        except EscrowRefused as exc:
            raise EscrowFailed("close refused", exc.code.value) from exc
        try:
            return await ledger.fetch(handle.address)
        except EscrowNotFound:
            return None

    async def escrow_state(self) -> EscrowView:
        ledger, handle = self._escrow()
        return await ledger.fetch(handle.address)

    def _escrow(self) -> tuple[EscrowLedger, EscrowHandle]:
        if self.escrow is None or self.renter.ledger is None:
            raise EscrowFailed("this rental has no escrow")
        return self.renter.ledger, self.escrow


class Renter:
    """A renter's workflow over one node: find offers, fund and agree rentals, offer inputs.

    ``clock`` (wall seconds) and ``nonce`` (fresh bytes) stamp the signed messages; ``ledger``
    funds every rental (without one, ``rent`` refuses: every rental is paid for)."""

    def __init__(self, network: Network, key: SigningKey, book: OfferBook, shelf: BlobShelf,
                 ledger: EscrowLedger | None, *, accept_simulated: bool, clock: Callable[[], int],
                 nonce: Callable[[], bytes], billing_policy: BillingPolicy | None = None,
                 input_roots: Sequence[Path | str] | None = None, rentals: RentalBook | None = None,
                 settlements: Settlements | None = None, listen: LocalListen | None = None) -> None:
        self.network = network
        #: where rentals are kept so this node re-attaches after a restart (None: not kept)
        self.rentals = rentals
        #: the node's pending settlements (durable, retried); None: each close is tried once
        self.settlements = settlements
        #: binds 127.0.0.1 ports for forwards (None: this renter cannot forward)
        self.listen = listen
        #: inputs must lie under these folders; None: any file this process can read (a library
        #: caller is the owner; the local API always passes the roots its owner configured)
        self.input_roots = None if input_roots is None else resolve_roots(input_roots)
        self.key = key
        self.book = book
        self.shelf = shelf
        self.ledger = ledger
        #: rental ids only increase (docs/escrow-rules.md); microseconds of the injected wall clock
        self.rental_ids = RentalIds(lambda: clock() * 1_000_000)
        self.accept_simulated = accept_simulated
        self.clock = clock
        self.nonce = nonce
        self.billing_policy = billing_policy or BillingPolicy(poll_interval_s=2.0)
        #: set when the node under the workflow stops; every later call raises NotConnected
        self.closed = False

    @property
    def wallet(self) -> str:
        return self.key.public_key.wallet

    def check_live(self) -> None:
        if self.closed:
            raise NotConnected("the client is closed")

    async def add_input(self, local_path: Path | str, job_path: str, *, provider: str,
                        ttl_s: float = 3600.0) -> InputRef:
        """Offer ``local_path`` to ``provider`` (a wallet) as the job's input ``job_path``."""
        self.check_live()
        source = Path(local_path) if self.input_roots is None else resolve_input(local_path, self.input_roots)
        try:
            entry = await self.shelf.add_file(source, allowed=[provider], ttl_s=ttl_s)
        except (BlobError, OSError) as exc:
            raise RenterError(f"cannot offer {local_path} as an input: {exc}") from exc
        try:
            return InputRef(path=job_path, cid=entry.cid)
        except ValueError as exc:
            raise RenterError(f"bad input path {job_path!r}: {exc}") from exc

    async def find_offers(self, *, gpu_model: str | None = None, min_vram_mib: int = 0, gpu_count: int = 1,
                          region: str | None = None, max_price_per_minute: int | None = None,
                          executor: Executor | None = None, include_simulated: bool | None = None,
                          wait_s: float = 5.0, min_results: int = 1) -> list[OfferInfo]:
        """Offers matching the filters, cheapest first; waits up to ``wait_s`` for ``min_results``."""
        self.check_live()
        query = OfferQuery(gpu_model=gpu_model, min_vram_mib=min_vram_mib, gpu_count=gpu_count, region=region,
                           max_price_per_minute=max_price_per_minute, executor=executor,
                           include_simulated=self.accept_simulated if include_simulated is None
                           else include_simulated)
        with trio.move_on_after(wait_s):
            await self.book.wait_for(query, now=self.clock, count=min_results)
        return [OfferInfo(e.offer, e.peer_id) for e in self.book.query(query, now=self.clock())]

    @staticmethod
    def estimate(offer: OfferInfo, minutes: int, gpu_count: int = 1, fee_bps: int = DEFAULT_FEE_BPS) -> Estimate:
        """What ``minutes`` on ``offer`` cost at most (the deposit), and the provider/fee split."""
        return estimate(offer.price_per_minute * gpu_count, minutes, fee_bps)

    async def balance(self) -> int:
        """This wallet's token balance in base units (0 without a ledger)."""
        if self.ledger is None:
            await trio.lowlevel.checkpoint()  # a caller may poll this: it must not starve the node
            return 0
        return await self.ledger.balance(self.wallet)

    async def faucet(self, amount: int) -> int:
        """Development ledgers only: mint ``amount`` worthless base units to this wallet."""
        faucet = getattr(self.ledger, "faucet", None)
        if faucet is None:
            raise EscrowFailed("this ledger has no faucet (it holds real value)", "no_faucet")
        try:
            return int(await faucet(amount))
        except ContractsError as exc:
            raise EscrowFailed(f"the faucet refused: {exc}") from exc

    async def rent(self, offer: OfferInfo | None = None, *, image: str | None = None, script: str | None = None,
                   command: Sequence[str] = (), env: dict[str, str] | None = None, max_minutes: int = 10,
                   gpu_count: int = 1, egress: bool = False, max_price_per_minute: int | None = None,
                   gpu_model: str | None = None, min_vram_mib: int = 0,
                   inputs: Mapping[str, Path | str] | None = None, stop_on_disconnect: bool = False,
                   forward: Sequence[int | str | PortForward] = (), interactive: bool = False,
                   result_upload: str | None = None) -> Rental:
        """Negotiate a rental (and lock its deposit) with ``offer``, or with the cheapest match
        that can be reached and agrees (up to ``RENT_ATTEMPTS`` offers are tried).

        ``inputs`` maps a path under the job's inputs folder (``/inputs`` in Docker,
        ``$HOME/inputs`` for scripts) to a local file; the provider fetches it from us before the
        job starts. ``forward`` (``8888``, or ``"LOCAL:PORT"``) names the job's TCP ports to reach
        on 127.0.0.1 while it runs (offers that do not allow it are passed over); an ``interactive``
        job runs until the renter closes it or the paid minutes end. Needs a ledger: every rental is
        paid for. A batch job runs on if this node goes away (it re-attaches: :meth:`attach`), unless
        ``stop_on_disconnect`` (an interactive one stops). ``result_upload``, a signed upload link of
        our bootstrap storage (``upload_link``), has the provider push the packed result there too."""
        self.check_live()
        forwards = as_forwards(forward)
        if forwards and self.listen is None:
            raise RenterError("this renter cannot listen on local ports, so it cannot forward")
        if self.ledger is None:
            raise EscrowFailed("this client has no ledger (connect with ledger_url or ledger), so it cannot "
                               "fund a rental", "no_ledger")
        executor = Executor.SCRIPT if script is not None else Executor.DOCKER
        spec: dict[str, Any] = {"executor": executor, "image": image, "script": script, "command": tuple(command),
                                "env": dict(env or {}), "max_minutes": max_minutes, "gpu_count": gpu_count,
                                "min_vram_mib": min_vram_mib, "egress": egress, "interactive": interactive,
                                "forward_ports": tuple(f.job_port for f in forwards),
                                "stop_on_disconnect": stop_on_disconnect, "result_upload": result_upload}
        if offer is not None:
            return await self._rent_from(offer, spec, inputs or {}, max_price_per_minute, forwards)
        found = await self.find_offers(gpu_model=gpu_model, min_vram_mib=min_vram_mib, gpu_count=gpu_count,
                                       max_price_per_minute=max_price_per_minute)
        if not found:
            raise NoOffersError("no offer matched; try a wider filter or a longer wait")
        failure: NegotiationFailed | None = None
        for candidate in found[:RENT_ATTEMPTS]:  # the cheapest that can be reached and agrees
            try:
                return await self._rent_from(candidate, spec, inputs or {}, max_price_per_minute, forwards)
            except NegotiationFailed as exc:
                log.info("%s; trying the next offer", exc)
                failure = exc
        assert failure is not None
        raise failure

    async def _rent_from(self, offer: OfferInfo, spec: dict[str, Any], inputs: Mapping[str, Path | str],
                         max_price_per_minute: int | None, forwards: tuple[PortForward, ...] = ()) -> Rental:
        assert self.ledger is not None
        if forwards and not offer.offer.forward:
            raise NegotiationFailed(f"provider {offer.provider[:8]}… does not forward ports into jobs")
        refs = tuple([await self.add_input(local, job_path, provider=offer.provider,
                                           ttl_s=spec["max_minutes"] * 60 + INPUT_TTL_SLACK_S)
                      for job_path, local in inputs.items()])
        job = {**spec, "inputs": refs, "gpu_model": offer.gpu_model,
               "max_price_per_minute": max_price_per_minute or offer.price_per_minute * spec["gpu_count"]}
        funder = LedgerFunder(self.ledger, self.rental_ids)
        try:
            result = await negotiate(self.network, self.key, offer.offer, job, escrow=funder, clock=self.clock,
                                     nonce=self.nonce, provider_peer=offer.peer_id)
        except RejectedError as exc:
            await self._refund_after_failed_negotiation(funder)
            raise NegotiationFailed(f"provider {offer.provider[:8]}… refused: {exc}", exc.code) from exc
        except NetworkError as exc:
            await self._refund_after_failed_negotiation(funder)
            self.book.forget(offer.provider)  # unreachable: out of our choices until it publishes again
            raise NegotiationFailed(f"could not negotiate with {offer.provider[:8]}…: {exc}") from exc
        self.book.mark_rented(offer.provider)
        if self.settlements is not None and funder.handle is not None:  # settled even if this process dies
            await self.settlements.arm(funder.handle, result.agreement.terms.start_deadline)
        rental = Rental(self, result.agreement, result.provider_peer, funder.handle,
                        tracker=RentalTracker(self.rentals, result.agreement.agreement_id, self.clock),
                        forwards=forwards)
        await rental.tracker.agreed(result.agreement, result.provider_peer, offer.offer.addrs,
                                    stop_on_disconnect=spec["stop_on_disconnect"])
        return rental

    async def attach(self, rental_id: str) -> Rental:
        """The rental ``rental_id`` (agreement id, or its API job id) as this node kept it; its
        ``run`` re-attaches to the job on the provider and follows it from the first log chunk
        not yet received, then settles as usual."""
        self.check_live()
        record = await self.rentals.rental_record(rental_id) if self.rentals is not None else None
        if record is None:
            raise RenterError(f"this node keeps no rental {rental_id[:64]!r}")
        return self._rental_of(record)

    async def detached_rentals(self) -> list[Rental]:
        """Rentals whose jobs this node followed when it went away (to re-attach after a restart)."""
        return [self._rental_of(r) for r in await self.rentals.open_rental_records()] if self.rentals else []

    def _rental_of(self, record: RentalRecord) -> Rental:
        assert self.rentals is not None
        agreement = Agreement.model_validate(record.agreement)
        if record.provider_addrs:
            self.network.add_addrs(record.provider_peer, list(record.provider_addrs))
        rental = Rental(self, agreement, record.provider_peer, handle_of(agreement.terms),
                        tracker=RentalTracker.of(self.rentals, record, self.clock))
        rental.result = ResultRef.model_validate(record.result) if record.result else None
        return rental

    async def _refund_after_failed_negotiation(self, funder: LedgerFunder) -> None:
        """A deposit locked for a deal that fell through comes straight back (never started)."""
        if funder.handle is None or self.ledger is None:
            return
        try:
            await settle_rental(self.ledger, funder.handle, self.settlements, wait_s=0)
        except ContractsError as exc:
            log.error("deposit of a failed negotiation stays in escrow %s for now: %s", funder.handle.address, exc)
