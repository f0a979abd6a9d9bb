"""The provider's negotiation service over an in-memory stream: policy, signatures, agreement."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.services.negotiation import (
    AgreementStore,
    ProviderNegotiator,
    ProviderPolicy,
    RefuseAll,
)
from dgpu.protocol.envelope import open_envelope, seal
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import (
    TO_RENTER_NEGOTIATION,
    Agreement,
    AgreementTerms,
    EscrowRef,
    Executor,
    JobRequest,
    Offer,
    Quote,
    Reject,
    RejectCode,
)
from dgpu.protocol.negotiation import UNCHECKED, Negotiation, Role

NOW = 10_000


class StaticFunderForTests:
    """TEST DOUBLE of the renter's ``EscrowSource`` (in-memory tests only): returns a fixed
    reference and locks nothing. Real renters fund with ``dgpu.client.client.LedgerFunder``."""

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


def _provider(offer: Offer, key: SigningKey, running: int = 0, **policy: Any
              ) -> ProviderNegotiator:
    return ProviderNegotiator(
        key, ProviderPolicy(price_floor_per_gpu_minute=100, **policy),
        offer_for_seq=lambda seq: offer if seq == offer.seq else None,
        verifier=VerifierForTests(accept=True), agreements=AgreementStore(),
        running_jobs=lambda: running, clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16))


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
