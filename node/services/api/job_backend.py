"""The local API's real job backend: each API job is a rental through the renter workflow."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import trio

from dgpu.node.ports.store import RentalRecord
from dgpu.node.services.api.errors import JobRunError
from dgpu.node.services.api.jobs import ApiJob, JobFinal
from dgpu.node.services.api.schema import ApiJobState, JobSpec
from dgpu.node.services.forward_client import ShellSession
from dgpu.node.services.offers import BookEntry, OfferBook, OfferQuery
from dgpu.node.services.renter import (
    EscrowFailed,
    InputRefused,
    NegotiationFailed,
    OfferInfo,
    Rental,
    Renter,
    RenterError,
)

__all__ = ["OFFER_WAIT_S", "KeptJob", "NetworkJobBackend", "no_match_message"]

log = logging.getLogger(__name__)

#: how long a submitted job waits for a matching offer before failing with no_offers (a fresh
#: node learns offers by gossip, which takes seconds on a loaded machine)
OFFER_WAIT_S = 10.0


def no_match_message(book: OfferBook, query: OfferQuery, now: int) -> str:
    """"no offer matches", with the closest offers and why each was passed over."""
    near = book.closest(query, now=now)
    if not near:
        return (f"no offer matches this job: this node knows no offers (waited {OFFER_WAIT_S:.0f} s; is a "
                "provider on the network?)")
    hidden = sum(1 for _, reason in near if reason.startswith("simulated"))
    why = "; ".join(f"{e.offer.provider} ({e.offer.gpus[0].model}): {reason}" for e, reason in near)
    hint = " (a renter node started with --accept-simulated shows simulated offers)" if hidden else ""
    return f"no offer matches this job; closest {len(near)} of {len(book)}: {why}{hint}"


@dataclass(frozen=True, slots=True)
class KeptJob:
    """An API job whose rental this node kept (it went away while the job ran)."""

    job_id: str
    spec: JobSpec
    agreement_id: str


def _kept(record: RentalRecord) -> KeptJob | None:
    if record.api_job_id is None or record.api_spec is None:
        return None  # a library client's rental: ``Client.attach`` re-attaches it
    return KeptJob(record.api_job_id, JobSpec.model_validate(record.api_spec), record.agreement_id)


class NetworkJobBackend:
    """Runs API jobs on the network from this node through the renter workflow (``Renter``, the
    same code as the renter library's ``Client``). Every job is paid for: the renter negotiates
    with a ``LedgerFunder`` (the escrow is opened on its ledger before the quote is accepted),
    then follows the job stream with billing, then settles. There is no unpaid path: a node
    without a ledger has no backend (``JobManager`` refuses submissions with ``no_ledger``)."""

    def __init__(self, renter: Renter, *, results_dir: Path, progress_interval_s: float) -> None:
        self.renter = renter
        #: where verified result archives are kept (one per job, removed with its record)
        self.results_dir = results_dir
        self.progress_interval_s = progress_interval_s

    async def _pick(self, spec: JobSpec) -> BookEntry:
        book, clock = self.renter.book, self.renter.clock
        if spec.provider is not None:
            entry = book.get(spec.provider)
            if entry is None or entry.offer.expires_at <= clock():
                raise JobRunError(f"no live offer from provider {spec.provider}", "no_offers")
            return entry
        query = OfferQuery(gpu_model=spec.gpu_model, min_vram_mib=spec.min_vram_mib,
                           gpu_count=spec.gpu_count, region=spec.region,
                           max_price_per_minute=None if spec.max_price_per_minute is None
                           else spec.max_price_per_minute // spec.gpu_count,
                           executor=spec.executor, image=spec.image,
                           include_simulated=self.renter.accept_simulated)
        with trio.move_on_after(OFFER_WAIT_S):
            await book.wait_for(query, now=clock)
        hits = book.query(query, now=clock())
        if not hits:
            raise JobRunError(no_match_message(book, query, clock()), "no_offers")
        return hits[0]

    async def run(self, spec: JobSpec, job: ApiJob) -> JobFinal:
        entry = await self._pick(spec)
        return await self._run_paid(spec, job, entry)

    async def _run_paid(self, spec: JobSpec, job: ApiJob, entry: BookEntry) -> JobFinal:
        try:
            rental = await self.renter.rent(
                OfferInfo(entry.offer, entry.peer_id), image=spec.image, script=spec.script,
                command=spec.command, env=dict(spec.env), max_minutes=spec.max_minutes,
                gpu_count=spec.gpu_count, egress=spec.egress,
                max_price_per_minute=spec.max_price_per_minute, min_vram_mib=spec.min_vram_mib,
                inputs=dict(spec.inputs), stop_on_disconnect=spec.stop_on_disconnect, forward=spec.forward,
                interactive=spec.interactive, result_upload=spec.result_upload)
        except InputRefused as exc:
            raise JobRunError(str(exc), InputRefused.code) from exc
        except NegotiationFailed as exc:
            raise JobRunError(str(exc), "negotiation_failed") from exc
        except EscrowFailed as exc:
            raise JobRunError(str(exc), "escrow_failed") from exc
        except RenterError as exc:  # a forward it cannot serve
            raise JobRunError(str(exc), "rent_refused") from exc
        job.agreed(entry.offer.provider, rental.rate_per_minute,
                   escrow=rental.escrow.address if rental.escrow else None, agreement_id=rental.id)
        if self.renter.rentals is not None:  # kept, so a restarted node re-attaches to the job
            await self.renter.rentals.link_api_job(rental.id, job.id, spec.model_dump(mode="json"))
        if job.cancel_requested.is_set():  # cancelled while negotiating: nothing ran, all back
            try:
                view = await rental.close()
            except RenterError as exc:
                raise JobRunError(f"cancelled, but closing the escrow failed: {exc}", "escrow_failed") from exc
            if view is None:  # the account is gone (Solana); nothing was claimed before start
                r = rental.close_receipt
                assert r is not None
                return JobFinal(ApiJobState.CANCELLED, reason="cancelled before start",
                                minutes=(r.paid + r.fee) // rental.rate_per_minute, paid=r.paid, fee=r.fee,
                                refunded=r.refunded)
            return JobFinal(ApiJobState.CANCELLED, reason="cancelled before start",
                            minutes=view.claimed_minutes, paid=view.paid, fee=view.fee_paid,
                            refunded=view.refunded)
        return await self._follow(rental, job)

    async def kept(self) -> list[KeptJob]:
        """The API jobs this node followed when it last went away (re-attached at start)."""
        if self.renter.rentals is None:
            return []
        return [k for r in await self.renter.rentals.open_rental_records() if (k := _kept(r)) is not None]

    async def find(self, key: str) -> KeptJob | None:
        """The kept API job by its id or its agreement id."""
        record = await self.renter.rentals.rental_record(key) if self.renter.rentals is not None else None
        return _kept(record) if record is not None else None

    async def reattach(self, kept: KeptJob, job: ApiJob) -> JobFinal:
        """Re-attach to a kept API job's rental: the rest of its logs, its result, its settlement."""
        try:
            rental = await self.renter.attach(kept.agreement_id)
        except RenterError as exc:
            raise JobRunError(str(exc), "not_kept") from exc
        terms = rental.agreement.terms
        job.agreed(terms.provider, rental.rate_per_minute, escrow=terms.escrow.address, agreement_id=rental.id)
        return await self._follow(rental, job)

    async def _follow(self, rental: Rental, job: ApiJob) -> JobFinal:
        """Follow an agreed rental's job to its end (logs, progress, cancel), then its result."""

        async def follow_cancel() -> None:
            await job.cancel_requested.wait()
            rental.cancel()

        async def poll_progress() -> None:
            while True:
                await trio.sleep(self.progress_interval_s)
                try:
                    view = await rental.escrow_state()
                except RenterError:
                    continue
                except Exception as exc:  # supervisor loop: a ledger hiccup must not end the job
                    log.info("escrow poll for job %s failed: %s", job.id, type(exc).__name__)
                    continue
                job.progress(view.accrued_minutes, view.accrued_minutes * view.rate_per_minute)

        async def open_shell(argv: tuple[str, ...], rows: int, cols: int, tty: bool) -> ShellSession:
            return await rental.shell(argv, rows=rows, cols=cols, tty=tty)

        job.open_shell = open_shell
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_cancel)
            nursery.start_soon(poll_progress)
            try:
                result = await rental.run(on_log=lambda c: job.log(c.stream, c.data), on_forward=job.forwards.append)
            except RenterError as exc:
                raise JobRunError(str(exc), "job_lost") from exc
            finally:
                job.open_shell = None
                nursery.cancel_scope.cancel()
        if result.result is not None:
            archive = self.results_dir / f"{job.id}.tar"
            try:
                await rental.fetch_result_archive(archive)
            except RenterError as exc:  # the job still finished; only its outputs are missing
                log.warning("job %s: result not fetched: %s", job.id, exc)
            else:
                job.result_file = archive
        check = result.reconciliation
        return JobFinal(_final_state(str(result.state)), result.exit_code, result.reason,
                        result.minutes, result.paid, result.fee, result.refunded, result.receipts,
                        check is not None and check.over_accrued)


def _final_state(value: str) -> ApiJobState:
    try:
        state = ApiJobState(value)
    except ValueError:
        return ApiJobState.FAILED
    return state if state.terminal else ApiJobState.FAILED
