"""Money before work, against the real development ledger (in process): the escrow is re-read at
submit, started and seen started before the job, a cancel in STARTING stops it, and an agreement
whose escrow the renter emptied holds no capacity (no free slot blocking)."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.contracts.escrow_api import EscrowHandle
from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.ports.execution import JobHandle, JobSpec, ResourceLimits
from dgpu.node.services.billing import LedgerEscrowGate, LedgerEscrowVerifier
from dgpu.node.services.job_stream import JobServer
from dgpu.node.services.negotiation import AgreementStore, ProviderNegotiator, ProviderPolicy
from dgpu.node.services.renter import LedgerFunder
from dgpu.protocol.envelope import open_envelope, seal
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import (
    TO_RENTER_JOB,
    Agreement,
    AgreementTerms,
    Executor,
    JobCancel,
    JobState,
    JobStatus,
    JobSubmit,
    Reject,
    RejectCode,
)
from tests.node.conftest import make_offer
from tests.node.test_billing import Ledgers, dev_ledger
from tests.node.test_negotiation_service import (
    NOW,
    MemRaw,
    OffersForTests,
    RecordingExecutorForTests,
    _exchange,
    _request,
    inventory_for,
)

PROVIDER = SigningKey(b"p" * 32)  # the provider's wallet on the test ledger
RENTER = SigningKey(b"r" * 32)


class StartCheckingExecutorForTests(RecordingExecutorForTests):
    """TEST DOUBLE executor: records, at the moment it is asked to start a job, whether the
    ledger already shows the job's escrow started (money before work)."""

    def __init__(self, ledger: DevLedgerEscrow) -> None:
        super().__init__()
        self.ledger = ledger
        self.escrow_started_first: list[bool] = []
        self.address = ""

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> JobHandle:
        view = await self.ledger.fetch(self.address)
        self.escrow_started_first.append(view.started_at is not None and view.status is EscrowStatus.OPEN)
        return await super().start(spec, limits)


class HeldGateForTests:
    """TEST DOUBLE around the real ``LedgerEscrowGate``: ``start`` waits for ``go`` first, so a
    test can act while the job is in STARTING."""

    def __init__(self, gate: LedgerEscrowGate) -> None:
        self.gate = gate
        self.go = trio.Event()

    async def problem(self, terms: AgreementTerms) -> str | None:
        return await self.gate.problem(terms)

    async def start(self, terms: AgreementTerms) -> str | None:
        await self.go.wait()
        return await self.gate.start(terms)

    async def settle(self, terms: AgreementTerms) -> None:
        await self.gate.settle(terms)


@dataclass
class Stack:
    ledgers: Ledgers
    negotiator: ProviderNegotiator
    executor: StartCheckingExecutorForTests
    server: JobServer
    funder: LedgerFunder


@asynccontextmanager
async def stack(tmp_path: Path, *, max_jobs: int = 1) -> AsyncIterator[Stack]:
    async with dev_ledger(tmp_path) as ledgers:
        mint = (await ledgers.provider.mint_info()).address
        offer = make_offer(PROVIDER, seq=3, now=NOW, executors=(Executor.SCRIPT,)).model_copy(
            update={"mint": mint, "ledger": ledgers.provider.ledger})
        inventory = inventory_for(offer, PROVIDER, max_jobs=max_jobs)
        inventory._clock = lambda: ledgers.now  # the ledger's clock, as the provider wires it
        agreements = AgreementStore()
        negotiator = ProviderNegotiator(
            PROVIDER, ProviderPolicy(), offers=OffersForTests(offer), inventory=inventory,
            verifier=LedgerEscrowVerifier(ledgers.provider, mint), agreements=agreements,
            clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16), deadline_clock=lambda: ledgers.now)
        executor = StartCheckingExecutorForTests(ledgers.provider)
        server = JobServer(PROVIDER, agreements, inventory, executor_for=lambda e: executor,
                           limits_cap=ResourceLimits(), clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16),
                           deadline_clock=lambda: ledgers.now, escrow=LedgerEscrowGate(ledgers.provider, mint),
                           on_abandoned=negotiator.abandoners.abandoned)
        # a renter's rental ids only increase (random ones were refused RentalIdUsed now and then)
        funder = LedgerFunder(ledgers.renter, itertools.count(1).__next__)
        yield Stack(ledgers, negotiator, executor, server, funder)


async def agree(s: Stack) -> tuple[Agreement, EscrowHandle]:
    got = await _exchange(s.negotiator, RENTER, _request(RENTER, s.negotiator.offers.offer_for_seq(3)),  # type: ignore[arg-type]
                          s.funder)  # type: ignore[arg-type]
    assert isinstance(got[-1], Agreement), got
    assert s.funder.handle is not None
    s.executor.address = s.funder.handle.address
    return got[-1], s.funder.handle


def sealed(message: Any) -> bytes:
    return seal(message, RENTER, nonce=secrets.token_bytes(16), issued_at=NOW, expires_at=NOW + 60)


async def submit(s: Stack, agreement: Agreement, *, during_starting: Any = None) -> list[Any]:
    """Submit the agreement's job; returns every message the provider sent, to the final one."""
    a, b = trio.testing.memory_stream_pair()
    provider_end = FramedStream(MemRaw(a), max_frame_bytes=65536, read_timeout_s=5)
    renter_end = FramedStream(MemRaw(b), max_frame_bytes=65536, read_timeout_s=5)
    got: list[Any] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(s.server.handle, provider_end)
            await renter_end.write_frame(sealed(JobSubmit(agreement=agreement)))
            while True:
                msg = open_envelope(await renter_end.read_frame(), TO_RENTER_JOB, now=NOW,
                                    max_bytes=65536).message
                got.append(msg)
                if isinstance(msg, Reject) or (isinstance(msg, JobStatus) and msg.state.terminal):
                    break
                if isinstance(msg, JobStatus) and msg.state is JobState.STARTING and during_starting:
                    await during_starting(renter_end, agreement)
            await renter_end.close()
    return got


async def test_bait_and_switch_is_refused_nothing_runs_and_nothing_is_owed(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        agreement, handle = await agree(s)
        before = await s.ledgers.renter.balance(RENTER.public_key.wallet)
        refund = await s.ledgers.renter.close(handle)  # the switch: the deposit comes back
        assert refund.refunded == agreement.terms.deposit
        got = await submit(s, agreement)
        assert isinstance(got[-1], Reject) and got[-1].code is RejectCode.ESCROW_INVALID
        assert s.executor.specs == []  # nothing ran
        view = await s.ledgers.provider.fetch(handle.address)
        assert view.status is EscrowStatus.CLOSED and view.accrued_minutes == 0
        assert await s.ledgers.renter.balance(RENTER.public_key.wallet) == before + agreement.terms.deposit
        assert s.negotiator.inventory.leases == 0  # its capacity is free again


async def test_the_escrow_is_started_and_seen_started_before_the_job(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        agreement, handle = await agree(s)
        got = await submit(s, agreement)
        assert isinstance(got[-1], JobStatus) and got[-1].state is JobState.FINISHED
        assert s.executor.escrow_started_first == [True]
        assert (await s.ledgers.provider.fetch(handle.address)).started_at is not None


async def test_a_cancel_in_starting_stops_the_job_and_refunds(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        held = HeldGateForTests(s.server.escrow)  # type: ignore[arg-type]
        s.server.escrow = held
        agreement, handle = await agree(s)

        async def cancel(renter_end: FramedStream, agreement: Agreement) -> None:
            await renter_end.write_frame(sealed(JobCancel(job_id=agreement.agreement_id, reason="changed my mind")))
            await trio.testing.wait_all_tasks_blocked()  # the provider has read the cancel
            held.go.set()

        got = await submit(s, agreement, during_starting=cancel)
        assert isinstance(got[-1], JobStatus) and got[-1].state is JobState.CANCELLED
        assert s.executor.specs == []
        with trio.fail_after(10):
            while (view := await s.ledgers.provider.fetch(handle.address)).status is not EscrowStatus.CLOSED:
                await trio.sleep(0.01)
        assert view.accrued_minutes == 0


async def test_an_emptied_escrow_frees_the_slot_and_repeated_abandoners_are_throttled(tmp_path: Path) -> None:
    async with stack(tmp_path, max_jobs=1) as s:
        for _ in range(s.negotiator.abandoners.limit):
            _, handle = await agree(s)  # the one slot is leased to this agreement...
            await s.ledgers.renter.close(handle)  # ...and its escrow refunded at once
        # the last agreement's slot came back too, but this renter has abandoned enough
        got = await _exchange(s.negotiator, RENTER, _request(RENTER, s.negotiator.offers.offer_for_seq(3)),  # type: ignore[arg-type]
                              s.funder)  # type: ignore[arg-type]
        assert isinstance(got[0], Reject) and got[0].code is RejectCode.BUSY
        assert s.negotiator.inventory.leases == 0
        assert s.negotiator.outcomes["abandoned"] == s.negotiator.abandoners.limit


async def test_an_unsubmitted_agreement_frees_its_slot_after_the_submit_window(tmp_path: Path) -> None:
    async with stack(tmp_path, max_jobs=1) as s:
        await agree(s)
        request = _request(RENTER, s.negotiator.offers.offer_for_seq(3))  # type: ignore[arg-type]
        assert s.negotiator.decide(request, NOW)[0] is RejectCode.NO_CAPACITY  # type: ignore[index]
        await s.ledgers.advance(s.negotiator.policy.submit_window_s)  # far inside the start window
        agreement, _ = await agree(s)
        assert s.negotiator.inventory.lease_of(agreement.agreement_id) is not None
