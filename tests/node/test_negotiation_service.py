"""The provider's negotiation service over an in-memory stream: policy, signatures, agreement."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import trio
import trio.testing

from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.ports.execution import ExitReason, ExitStatus, JobHandle, JobSpec, LogChunk, ResourceLimits
from dgpu.node.ports.gpu import simulated_gpus
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.job_stream import JobServer
from dgpu.node.services.negotiation import (
    AgreementStore,
    ProviderNegotiator,
    ProviderPolicy,
    RefuseAll,
)
from dgpu.protocol.envelope import open_envelope, seal
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import (
    TO_RENTER_JOB,
    TO_RENTER_NEGOTIATION,
    Agreement,
    AgreementTerms,
    EscrowRef,
    Executor,
    JobRequest,
    JobState,
    JobStatus,
    JobSubmit,
    Offer,
    Quote,
    Reject,
    RejectCode,
)
from dgpu.protocol.negotiation import UNCHECKED, Negotiation, Role

NOW = 10_000


class StaticFunderForTests:
    """TEST DOUBLE of the renter's ``EscrowSource`` (in-memory tests only): returns a fixed
    reference and locks nothing. Real renters fund with ``dgpu.node.services.renter.LedgerFunder``."""

    def __init__(self, ref: EscrowRef | None = None) -> None:
        self.ref = ref or EscrowRef(ledger="tests", address="TEST-ESCROW-NOT-ON-ANY-LEDGER", rental_id=7)
        self.funded: list[Quote] = []

    async def fund(self, quote: Quote) -> EscrowRef:
        self.funded.append(quote)
        return self.ref


class VerifierForTests:
    """TEST DOUBLE of the provider's ``EscrowVerifier`` (in-memory tests only): answers ``accept``
    and records what it was asked. Real providers use ``LedgerEscrowVerifier`` (or ``RefuseAll``)."""

    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.asked: list[tuple[EscrowRef, AgreementTerms]] = []

    async def verify(self, escrow: EscrowRef, terms: AgreementTerms) -> bool:
        self.asked.append((escrow, terms))
        return self.accept


class MemRaw:
    """An in-memory byte stream with the read/write/close/reset surface of a libp2p stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.s = stream

    async def read(self, n: int | None = None) -> bytes:
        return await self.s.receive_some(n or 65536)

    async def write(self, data: bytes) -> None:
        await self.s.send_all(data)

    async def close(self) -> None:
        await self.s.aclose()

    async def reset(self) -> None:
        await self.s.aclose()


class OffersForTests:
    """TEST DOUBLE of the provider's ``OfferSource`` (its ``OfferPublisher``): one fixed offer."""

    def __init__(self, offer: Offer) -> None:
        self.offer = offer
        self.paused = False
        self.executors = offer.executors

    def offer_for_seq(self, seq: int) -> Offer | None:
        return self.offer if seq == self.offer.seq else None


def inventory_for(offer: Offer, owner: SigningKey, *, max_jobs: int = 1, price: int = 100) -> Inventory:
    """An inventory holding the GPUs ``offer`` lists, as records of real GPUs (no device exists:
    the executor here is a double too)."""
    gpus = [replace(g, uuid=f"GPU-test-{g.index}", simulated=False)
            for g in simulated_gpus(offer.gpus, owner=owner.public_key.wallet)]
    return Inventory(gpus, owner=owner.public_key.wallet, price_per_gpu_minute=price, max_jobs=max_jobs,
                     clock=lambda: NOW)


def _provider(offer: Offer, key: SigningKey, running: int = 0, *, max_jobs: int = 1, **policy: Any
              ) -> ProviderNegotiator:
    inventory = inventory_for(offer, key, max_jobs=max_jobs)
    for i in range(running):  # jobs already holding a slot
        inventory.lease(f"running-{i}", _request(key, offer, gpu_count=0), lapses_at=NOW + 600)
    return ProviderNegotiator(
        key, ProviderPolicy(**policy), offers=OffersForTests(offer), inventory=inventory,
        verifier=VerifierForTests(accept=True), agreements=AgreementStore(),
        clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16))


def _request(renter: SigningKey, offer: Offer, **over: Any) -> JobRequest:
    fields: dict[str, Any] = {"executor": Executor.SCRIPT, "script": "true", "max_minutes": 10,
                              "max_price_per_minute": 1000, "offer_seq": offer.seq}
    fields.update(over)
    return JobRequest(request_id=secrets.token_hex(16), renter=renter.public_key.wallet,
                      provider=offer.provider, **fields)


def test_policy_reject_paths(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    offer = offer_factory(key, seq=3, now=NOW, price=100,
                          executors=(Executor.SCRIPT, Executor.DOCKER))
    prov = _provider(offer, key, executors=(Executor.SCRIPT, Executor.DOCKER),
                     allowed_images=("registry.local/*",))
    assert isinstance(prov.decide(_request(renter, offer), NOW), Quote)
    cases = [
        ({"offer_seq": 2}, RejectCode.STALE_OFFER),
        ({"executor": Executor.DOCKER, "script": None, "image": "evil/miner"},
         RejectCode.IMAGE_NOT_ALLOWED),
        ({"egress": True}, RejectCode.EGRESS_NOT_ALLOWED),
        ({"gpu_model": "H100"}, RejectCode.GPU_MISMATCH),
        ({"max_minutes": 100_000}, RejectCode.DURATION_OUT_OF_RANGE),
        ({"max_price_per_minute": 99}, RejectCode.PRICE_TOO_LOW),
    ]
    for over, code in cases:
        decision = prov.decide(_request(renter, offer, **over), NOW)
        assert not isinstance(decision, Quote) and decision[0] is code, over
    docker_ok = _request(renter, offer, executor=Executor.DOCKER, script=None,
                         image="registry.local/train:1")
    assert isinstance(prov.decide(docker_ok, NOW), Quote)
    busy = _provider(offer, key, running=1)
    assert busy.decide(_request(renter, offer), NOW)[0] is RejectCode.NO_CAPACITY  # type: ignore[index]


async def _exchange(prov: ProviderNegotiator, renter: SigningKey, request: JobRequest,
                    funder: StaticFunderForTests | None = None) -> list[Any]:
    """Run the provider's handler against a hand-driven renter; returns what the renter got."""
    a, b = trio.testing.memory_stream_pair()
    server = FramedStream(MemRaw(a), max_frame_bytes=65536, read_timeout_s=5)
    client = FramedStream(MemRaw(b), max_frame_bytes=65536, read_timeout_s=5)
    got: list[Any] = []
    neg = Negotiation(Role.RENTER)
    source = funder or StaticFunderForTests()

    def sealed(m: Any) -> bytes:
        return seal(m, renter, nonce=secrets.token_bytes(16), issued_at=NOW, expires_at=NOW + 60)

    async def renter_side() -> None:
        neg.send(request, NOW)
        await client.write_frame(sealed(request))
        while True:
            msg = open_envelope(await client.read_frame(), TO_RENTER_NEGOTIATION, now=NOW,
                                max_bytes=65536).message
            got.append(msg)
            if not isinstance(msg, Quote):
                return
            neg.receive(msg, NOW, signer=UNCHECKED)
            ref = await source.fund(msg)
            await client.write_frame(sealed(neg.accept(ref, renter, NOW)))

    async with trio.open_nursery() as n:
        n.start_soon(prov.handle, server)
        await renter_side()
    return got


async def test_full_negotiation_yields_a_doubly_signed_agreement(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    offer = offer_factory(key, seq=3, now=NOW, price=100, executors=(Executor.SCRIPT,))
    prov = _provider(offer, key)
    funder = StaticFunderForTests()
    got = await _exchange(prov, renter, _request(renter, offer), funder)
    assert isinstance(got[0], Quote) and isinstance(got[1], Agreement)
    assert got[1].terms.rate_per_minute == 100 and got[1].terms.deposit == 1000
    assert got[1].terms.escrow == funder.ref and funder.funded == [got[0]]  # funded for that quote
    assert isinstance(prov.verifier, VerifierForTests)
    assert prov.verifier.asked == [(funder.ref, got[1].terms)]  # verified before agreeing
    assert len(prov.agreements) == 1 and prov.outcomes == {"agreed": 1}


async def test_request_signed_by_someone_else_is_rejected(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter, other = SigningKey(secrets.token_bytes(32)), SigningKey(secrets.token_bytes(32))
    offer = offer_factory(key, seq=3, now=NOW, executors=(Executor.SCRIPT,))
    prov = _provider(offer, key)
    # the request names `renter` but `other` signs the envelope
    got = await _exchange(prov, other, _request(renter, offer))
    assert isinstance(got[0], Reject) and got[0].code is RejectCode.BAD_SIGNATURE
    assert len(prov.agreements) == 0


async def test_escrow_the_verifier_refuses_is_rejected_as_escrow_invalid(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    offer = offer_factory(key, seq=3, now=NOW, executors=(Executor.SCRIPT,))
    prov = _provider(offer, key)
    verifier = VerifierForTests(accept=False)
    prov.verifier = verifier
    funder = StaticFunderForTests()
    got = await _exchange(prov, renter, _request(renter, offer), funder)
    assert isinstance(got[0], Quote)
    assert isinstance(got[1], Reject) and got[1].code is RejectCode.ESCROW_INVALID
    assert [ref for ref, _ in verifier.asked] == [funder.ref]
    assert len(prov.agreements) == 0 and prov.outcomes == {str(RejectCode.ESCROW_INVALID): 1}


async def test_provider_without_a_ledger_refuses_every_escrow(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    offer = offer_factory(key, seq=3, now=NOW, executors=(Executor.SCRIPT,))
    prov = _provider(offer, key)
    prov.verifier = RefuseAll()
    got = await _exchange(prov, renter, _request(renter, offer))
    assert isinstance(got[1], Reject) and got[1].code is RejectCode.ESCROW_INVALID
    assert len(prov.agreements) == 0


async def test_an_agreement_leases_distinct_gpus_until_its_slots_run_out(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    offer = offer_factory(key, seq=3, now=NOW, price=100, count=2, executors=(Executor.SCRIPT,))
    prov = _provider(offer, key, max_jobs=3)
    first = await _exchange(prov, renter, _request(renter, offer))
    second = await _exchange(prov, renter, _request(renter, offer))
    leases = [prov.inventory.lease_of(got[1].agreement_id) for got in (first, second)]
    assert all(lease is not None and len(lease.uuids) == 1 for lease in leases)
    assert leases[0].uuids != leases[1].uuids  # type: ignore[union-attr]
    # both GPUs are leased: a third slot is free but no GPU is
    assert prov.decide(_request(renter, offer), NOW)[0] is RejectCode.NO_CAPACITY  # type: ignore[index]
    cpu_only = await _exchange(prov, renter, _request(renter, offer, gpu_count=0))
    assert isinstance(cpu_only[1], Agreement) and prov.inventory.lease_of(cpu_only[1].agreement_id).uuids == ()  # type: ignore[union-attr]
    assert prov.decide(_request(renter, offer, gpu_count=0), NOW)[0] is RejectCode.NO_CAPACITY  # type: ignore[index]


async def test_a_paused_provider_takes_no_request(key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    offer = offer_factory(key, seq=3, now=NOW, executors=(Executor.SCRIPT,))
    prov = _provider(offer, key)
    assert isinstance(prov.offers, OffersForTests)
    prov.offers.paused = True
    assert prov.decide(_request(renter, offer), NOW)[0] is RejectCode.NO_CAPACITY  # type: ignore[index]
    prov.offers.paused = False
    assert isinstance(prov.decide(_request(renter, offer), NOW), Quote)


class RecordingExecutorForTests:
    """TEST DOUBLE of an executor (in-memory tests only): records the specs it is asked to start
    and runs nothing; each job ends at once with exit code 0."""

    def __init__(self) -> None:
        self.specs: list[JobSpec] = []

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> JobHandle:
        self.specs.append(spec)
        return _FinishedHandle(spec.job_id)


class _FinishedHandle:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    async def logs(self) -> AsyncIterator[LogChunk]:
        return
        yield

    async def wait(self) -> ExitStatus:
        return ExitStatus(0, ExitReason.FINISHED)

    async def stop(self, grace_s: float = 10.0) -> None:
        del grace_s

    async def cleanup(self) -> None:
        pass


async def test_the_job_runs_on_the_leased_gpus_and_frees_them_at_the_end(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    offer = offer_factory(key, seq=3, now=NOW, count=2, executors=(Executor.SCRIPT,))
    prov = _provider(offer, key)
    agreement = (await _exchange(prov, renter, _request(renter, offer)))[1]
    lease = prov.inventory.lease_of(agreement.agreement_id)
    assert lease is not None and len(lease.uuids) == 1
    executor = RecordingExecutorForTests()
    server = JobServer(key, prov.agreements, prov.inventory, executor_for=lambda e: executor,
                       limits_cap=ResourceLimits(), clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16))
    a, b = trio.testing.memory_stream_pair()
    provider_end = FramedStream(MemRaw(a), max_frame_bytes=65536, read_timeout_s=5)
    renter_end = FramedStream(MemRaw(b), max_frame_bytes=65536, read_timeout_s=5)
    states = []
    async with trio.open_nursery() as n:
        n.start_soon(server.handle, provider_end)
        await renter_end.write_frame(seal(JobSubmit(agreement=agreement), renter, nonce=secrets.token_bytes(16),
                                          issued_at=NOW, expires_at=NOW + 60))
        while not states or not states[-1].terminal:
            msg = open_envelope(await renter_end.read_frame(), TO_RENTER_JOB, now=NOW, max_bytes=65536).message
            if isinstance(msg, JobStatus):
                states.append(msg.state)
    assert states[-1] is JobState.FINISHED
    assert [s.gpu_uuids for s in executor.specs] == [lease.device_ids] == [lease.uuids]  # lease -> executor
    assert prov.inventory.leases == 0 and prov.inventory.lease_of(agreement.agreement_id) is None
