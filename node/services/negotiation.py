"""``/dgpu/negotiate/1.0.0`` on both sides, driven by :class:`dgpu.protocol.negotiation.Negotiation`.

Theory of operation (h11-style shell): read a frame, open the envelope, feed the machine,
decide, let the machine record our move, seal it and write it. Every read has a deadline;
any refusal ends with a signed ``Reject`` when there is a request to answer.

Provider: ``JobRequest`` → policy (offer freshness, free capacity, executors, images, egress,
GPUs, duration, price) → ``Quote`` or ``Reject``; ``Accept`` → escrow verifier → a GPU lease from
the :class:`~dgpu.node.services.inventory.Inventory` → ``Agreement`` (countersigned) or
``Reject``. The Agreement is kept in :class:`AgreementStore` until the renter submits the job
(one job per agreement); its lease lapses after a short submit window (``submit_window_s``, at
most the start deadline) unless the job comes, and is released at once when a request finds the
capacity taken by agreements whose escrow is no longer funded (the renter closed it for a
refund). Renters whose agreements end so too often are throttled (:class:`Abandoners`).

Escrow: the renter funds the quote through an :class:`EscrowSource` (the renter library's
``LedgerFunder`` opens the escrow on the ledger) before it accepts, and the provider checks the
reference with an :class:`EscrowVerifier` (``LedgerEscrowVerifier`` reads the escrow on its
ledger). Nothing fakes funding: a provider with no ledger refuses every escrow (:class:`RefuseAll`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from dgpu.node.errors import NetworkError, RejectedError, StreamError
from dgpu.node.ports.network import FramedStream, Network
from dgpu.node.services.inventory import Inventory
from dgpu.protocol.envelope import ReplayCache, open_envelope, seal
from dgpu.protocol.errors import LocalProtocolError, RemoteProtocolError
from dgpu.protocol.ids import MAX_FRAME_BYTES, NEGOTIATE_PROTOCOL
from dgpu.protocol.keys import PublicKey, SigningKey
from dgpu.protocol.messages import (
    TO_PROVIDER_NEGOTIATION,
    TO_RENTER_NEGOTIATION,
    Accept,
    Agreement,
    AgreementTerms,
    EscrowRef,
    Executor,
    JobRequest,
    Offer,
    Quote,
    Reject,
    RejectCode,
    image_allowed,
)
from dgpu.protocol.negotiation import Negotiation, Role, State
from dgpu.protocol.peers import peer_id_of_wallet, wallet_of_peer

__all__ = [
    "Abandoners",
    "AgreementStore",
    "EscrowSource",
    "EscrowVerifier",
    "OfferSource",
    "ProviderNegotiator",
    "ProviderPolicy",
    "RefuseAll",
    "negotiate",
]

log = logging.getLogger(__name__)

Clock = Callable[[], int]
Nonce = Callable[[], bytes]

#: validity of each negotiation envelope: long enough for a slow peer, short for replays
ENVELOPE_TTL_S: Final = 60
#: deadline for one read of the peer's next message
STEP_READ_TIMEOUT_S: Final = 10.0
#: escrow reads in flight at once while reclaiming the capacity of unused agreements
RECLAIM_READS: Final = 8

class EscrowSource(Protocol):
    """Renter side: locks (or references) the deposit a quote asks for, before accepting."""

    async def fund(self, quote: Quote) -> EscrowRef: ...


class EscrowVerifier(Protocol):
    """Checks that the escrow an Accept names is funded for the terms (provider side)."""

    async def verify(self, escrow: EscrowRef, terms: AgreementTerms) -> bool: ...


class OfferSource(Protocol):
    """The provider's own offers (its ``OfferPublisher``): those recently published, the
    executors offered now, and whether offering is paused (then no new request is taken)."""

    @property
    def paused(self) -> bool: ...

    @property
    def executors(self) -> tuple[Executor, ...]: ...

    def offer_for_seq(self, seq: int) -> Offer | None: ...


class RefuseAll:
    """Verifier for a provider with no ledger configured: every escrow is refused."""

    async def verify(self, escrow: EscrowRef, terms: AgreementTerms) -> bool:
        del escrow, terms
        return False


@dataclass(frozen=True, slots=True)
class ProviderPolicy:
    """What a provider agrees to (its price and job slots are the inventory's)."""

    executors: tuple[Executor, ...] = (Executor.SCRIPT,)
    #: docker images allowed: exact names, or prefixes ending in ``*``; empty = none
    allowed_images: tuple[str, ...] = ()
    allow_egress: bool = False
    #: jobs may ask for forwarded ports (``--allow-forward``); a request for them is refused otherwise
    allow_forward: bool = False
    fee_bps: int = 500
    quote_ttl_s: int = 30
    #: the provider must start within this window after the quote (escrow start deadline)
    start_window_s: int = 120
    #: an agreement whose job is not submitted within this many seconds frees its capacity
    submit_window_s: int = 30

    def image_allowed(self, image: str) -> bool:
        return image_allowed(self.allowed_images, image)


@dataclass(frozen=True, slots=True)
class SignedAgreement:
    agreement: Agreement
    request: JobRequest


class AgreementStore:
    """Agreements a provider signed and whose job has not been submitted yet (bounded, FIFO)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity  # a renter's unused agreements cannot grow memory forever
        self._items: OrderedDict[str, SignedAgreement] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: SignedAgreement) -> None:
        self._items[item.agreement.agreement_id] = item
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def take(self, agreement_id: str) -> SignedAgreement | None:
        """Remove and return it: an agreement runs one job."""
        return self._items.pop(agreement_id, None)

    def pending(self) -> list[SignedAgreement]:
        """Agreements signed and not yet submitted, oldest first."""
        return list(self._items.values())


class Abandoners:
    """Renters whose agreements ended unused (escrow emptied before the job, or never submitted),
    counted per wallet and per peer id over ``window_s``; past ``limit`` they are refused
    (``busy``) until their oldest abandonment leaves the window. Bounded: LRU of ``capacity``."""

    def __init__(self, clock: Clock, *, limit: int = 3, window_s: int = 600, capacity: int = 4096) -> None:
        self.clock = clock
        self.limit, self.window_s, self.capacity = limit, window_s, capacity
        self._seen: OrderedDict[str, list[int]] = OrderedDict()

    def abandoned(self, wallet: str) -> None:
        now = self.clock()
        for who in (wallet, peer_id_of_wallet(wallet)):
            times = [t for t in self._seen.pop(who, []) if t > now - self.window_s][-self.limit:]
            self._seen[who] = [*times, now]
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def throttled(self, *who: str | None) -> bool:
        now = self.clock()
        return any(w is not None and sum(t > now - self.window_s for t in self._seen.get(w, ())) >= self.limit
                   for w in who)


def reject_code(text: str) -> RejectCode:
    """A peer's reject code, or PROTOCOL_ERROR for one we do not know."""
    try:
        return RejectCode(text)
    except ValueError:
        return RejectCode.PROTOCOL_ERROR


def _gpu_fits(offer: Offer, request: JobRequest) -> bool:
    if request.gpu_count == 0:
        return True
    want = request.gpu_model.casefold() if request.gpu_model else None
    return any(
        (want is None or g.model.casefold() == want)
        and g.vram_mib >= request.min_vram_mib and g.count >= request.gpu_count
        for g in offer.gpus
    )


class ProviderNegotiator:
    """Serves ``/dgpu/negotiate/1.0.0`` for a provider."""

    def __init__(self, key: SigningKey, policy: ProviderPolicy, *, offers: OfferSource,
                 inventory: Inventory, verifier: EscrowVerifier, agreements: AgreementStore,
                 clock: Clock, nonce: Nonce, deadline_clock: Clock | None = None,
                 ledger_speed: int = 1, abandoners: Abandoners | None = None) -> None:
        self.key = key
        self.abandoners = abandoners or Abandoners(clock)
        #: start deadlines are checked by the escrow's ledger, so they are set on its clock;
        #: a development ledger may run ``ledger_speed`` times faster than the wall clock
        self.deadline_clock = deadline_clock or clock
        self.ledger_speed = ledger_speed
        self.policy = policy
        self.offers = offers
        self.inventory = inventory
        self.verifier = verifier
        self.agreements = agreements
        self.clock = clock
        self.nonce = nonce
        # negotiation envelopes live 60 s: 20k entries is far above any honest rate
        self.replay_cache = ReplayCache(capacity=20_000)
        #: outcome counters (tests, metrics)
        self.outcomes: dict[str, int] = {}
        #: job requests received (the pricing service's demand reads it)
        self.requests_received = 0
        self._refused_request: JobRequest | None = None

    def _count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    def _seal(self, message: Any) -> bytes:
        now = self.clock()
        return seal(message, self.key, nonce=self.nonce(), issued_at=now,
                    expires_at=now + ENVELOPE_TTL_S)

    async def _read(self, fs: FramedStream, neg: Negotiation) -> JobRequest | Accept | None:
        """Next message from the renter, fed to the machine; None when the peer broke off."""
        data = await fs.read_frame(timeout_s=STEP_READ_TIMEOUT_S, max_bytes=MAX_FRAME_BYTES)
        now = self.clock()
        opened = open_envelope(data, TO_PROVIDER_NEGOTIATION, now=now, max_bytes=MAX_FRAME_BYTES,
                               replay_cache=self.replay_cache)
        peer_wallet = wallet_of_peer(fs.remote_peer) if fs.remote_peer else None
        if peer_wallet is not None and opened.signer.wallet != peer_wallet:
            raise RemoteProtocolError("envelope signer is not the connected peer",
                                      reject_code=RejectCode.BAD_SIGNATURE)
        msg = opened.message
        try:
            if isinstance(msg, JobRequest) and msg.provider != self.key.public_key.wallet:
                raise RemoteProtocolError("request for another provider",
                                          reject_code=RejectCode.INVALID_REQUEST)
            neg.receive(msg, now, signer=opened.signer)
        except RemoteProtocolError:
            if isinstance(msg, JobRequest):
                # the machine refused it, so it holds no request id: keep one to answer with
                self._refused_request = msg
            raise
        return msg

    def decide(self, request: JobRequest, now: int) -> tuple[RejectCode, str] | Quote:
        """Policy: a Quote, or why not. Pure given its inputs (tests call it directly)."""
        p = self.policy
        offer = self.offers.offer_for_seq(request.offer_seq)
        if offer is None or offer.expires_at <= now:
            return RejectCode.STALE_OFFER, "that offer is no longer valid; re-read the offers"
        if self.offers.paused or self.inventory.leases >= self.inventory.max_jobs:
            return RejectCode.NO_CAPACITY, "all job slots are taken"
        if request.executor not in p.executors or request.executor not in self.offers.executors:
            return RejectCode.EXECUTOR_NOT_OFFERED, f"{request.executor} jobs are not offered"
        if request.image is not None and not p.image_allowed(request.image):
            return RejectCode.IMAGE_NOT_ALLOWED, "image not on the provider's allow-list"
        if request.egress and not p.allow_egress:
            return RejectCode.EGRESS_NOT_ALLOWED, "network egress is not allowed"
        if request.forward_ports and not p.allow_forward:
            return RejectCode.INVALID_REQUEST, "this provider does not forward ports into jobs (--allow-forward)"
        if not _gpu_fits(offer, request):
            return RejectCode.GPU_MISMATCH, "no GPU here matches the request"
        if not self.inventory.can_lease(request):
            return RejectCode.NO_CAPACITY, "the GPUs this request needs are leased"
        if not offer.min_minutes <= request.max_minutes <= offer.max_minutes:
            return (RejectCode.DURATION_OUT_OF_RANGE,
                    f"duration must be {offer.min_minutes}..{offer.max_minutes} minutes")
        gpus = max(1, request.gpu_count)
        unit = max(offer.price_per_minute, self.inventory.price_per_gpu_minute)
        rate = unit * gpus
        if rate > request.max_price_per_minute:
            return RejectCode.PRICE_TOO_LOW, f"the price is {rate} per minute for {gpus} GPU(s)"
        return Quote(
            request_id=request.request_id,
            quote_id=self.nonce().hex(),
            provider=self.key.public_key.wallet,
            rate_per_minute=rate,
            max_minutes=request.max_minutes,
            deposit=rate * request.max_minutes,
            fee_bps=p.fee_bps,
            mint=offer.mint,
            ledger=offer.ledger,
            start_deadline=self.deadline_clock() + p.start_window_s * self.ledger_speed,
            expires_at=now + p.quote_ttl_s,
        )

    async def _reject(self, fs: FramedStream, neg: Negotiation, code: RejectCode,
                      message: str, request: JobRequest | None = None) -> None:
        reject = neg.abort(code, message, self.clock())
        if reject is None and request is not None:  # refused before the machine took it
            reject = Reject(request_id=request.request_id, code=code, message=message[:512])
        self._count(str(code))
        if reject is not None:
            with contextlib.suppress(StreamError):  # the renter left; nothing more to tell it
                await fs.write_frame(self._seal(reject))

    async def _reclaim_abandoned(self) -> None:
        """Free the capacity of agreements not submitted in time or whose escrow was emptied.
        The escrows are read concurrently (at most ``RECLAIM_READS`` at once): a request waits
        for one ledger round trip, not one per pending agreement."""
        limiter = trio.CapacityLimiter(RECLAIM_READS)

        async def reclaim(item: SignedAgreement) -> None:
            agreement_id, terms = item.agreement.agreement_id, item.agreement.terms
            async with limiter:
                unused = (self.inventory.lease_of(agreement_id) is None
                          or not await self.verifier.verify(terms.escrow, terms))
            if unused and self.agreements.take(agreement_id) is not None:  # not submitted meanwhile
                self.inventory.release(agreement_id)
                self.abandoners.abandoned(terms.renter)
                self._count("abandoned")

        async with trio.open_nursery() as nursery:
            for item in self.agreements.pending():
                nursery.start_soon(reclaim, item)

    async def handle(self, fs: FramedStream) -> None:
        """One negotiation. Raises nothing on a peer's misbehaviour: it answers or hangs up."""
        neg = Negotiation(Role.PROVIDER)
        request: JobRequest | None = None
        try:
            msg = await self._read(fs, neg)
            if not isinstance(msg, JobRequest):
                return
            request = msg
            self.requests_received += 1
            if not self.inventory.can_lease(request):
                await self._reclaim_abandoned()
            if self.abandoners.throttled(request.renter, fs.remote_peer):
                await self._reject(fs, neg, RejectCode.BUSY, "too many unused agreements; try later")
                return
            decision = self.decide(request, self.clock())
            if not isinstance(decision, Quote):
                await self._reject(fs, neg, *decision)
                return
            neg.send(decision, self.clock())
            await fs.write_frame(self._seal(decision))
            answer = await self._read(fs, neg)
            if neg.state is State.REJECTED or not isinstance(answer, Accept):
                self._count("renter_declined")
                return
            assert neg.request is not None and neg.terms is not None
            terms = neg.terms
            if not await self.verifier.verify(answer.escrow, terms):
                await self._reject(fs, neg, RejectCode.ESCROW_INVALID,
                                   "the escrow is not funded for these terms")
                return
            if self.offers.paused or not self.inventory.can_lease(neg.request):
                await self._reject(fs, neg, RejectCode.NO_CAPACITY, "capacity taken meanwhile")
                return
            agreement = neg.agree(self.key, self.clock())
            # no checkpoint since can_lease: the lease is granted, until the submit window ends
            submit_by = self.deadline_clock() + self.policy.submit_window_s * self.ledger_speed
            self.inventory.lease(agreement.agreement_id, neg.request,
                                 lapses_at=min(terms.start_deadline, submit_by))
            self.agreements.add(SignedAgreement(agreement, neg.request))
            await fs.write_frame(self._seal(agreement))
            self._count("agreed")
        except RemoteProtocolError as exc:
            code = reject_code(exc.reject_code)
            refused, self._refused_request = self._refused_request, None
            await self._reject(fs, neg, code, str(exc)[:200], request or refused)
        except LocalProtocolError as exc:  # our own move was illegal: a bug or a timeout
            log.warning("negotiation with %s: %s", fs.remote_peer, exc)
            await self._reject(fs, neg, RejectCode.INTERNAL_ERROR, "provider error", request)
        except StreamError as exc:
            self._count("stream_error")
            log.info("negotiation with %s ended: %s", fs.remote_peer, exc)


@dataclass(frozen=True, slots=True)
class NegotiationResult:
    agreement: Agreement
    request: JobRequest
    quote: Quote
    #: libp2p peer id of the provider (dial it for the job stream)
    provider_peer: str


async def negotiate(node: Network, key: SigningKey, offer: Offer, job: dict[str, Any], *,
                    escrow: EscrowSource, clock: Clock, nonce: Nonce,
                    provider_peer: str | None = None,
                    accept_quote: Callable[[Quote], bool] | None = None) -> NegotiationResult:
    """Renter side: request, check the quote, accept with an escrow reference, get the Agreement.

    ``job`` holds the JobRequest fields a renter chooses (executor, script/image, command, env,
    gpu_model, gpu_count, min_vram_mib, max_minutes, max_price_per_minute, egress).
    ``escrow`` funds the quote before we accept (the renter library's ``LedgerFunder`` opens the
    escrow on the ledger). Raises RejectedError (the provider refused, or we refused its quote),
    NetworkError; errors from ``escrow.fund`` propagate unchanged.
    """
    peer = provider_peer or peer_id_of_wallet(offer.provider)
    if offer.addrs:
        node.add_addrs(peer, list(offer.addrs))
    provider_key = PublicKey.from_wallet(offer.provider)
    replay = ReplayCache(capacity=64)  # one negotiation: a handful of messages
    neg = Negotiation(Role.RENTER)

    def sealed(message: Any) -> bytes:
        now = clock()
        return seal(message, key, nonce=nonce(), issued_at=now, expires_at=now + ENVELOPE_TTL_S)

    async def receive(fs: FramedStream) -> Quote | Reject | Agreement:
        data = await fs.read_frame(timeout_s=STEP_READ_TIMEOUT_S, max_bytes=MAX_FRAME_BYTES)
        now = clock()
        try:
            opened = open_envelope(data, TO_RENTER_NEGOTIATION, now=now,
                                   max_bytes=MAX_FRAME_BYTES, replay_cache=replay,
                                   expected_signer=provider_key)
            msg = opened.message
            neg.receive(msg, now, signer=opened.signer)
        except RemoteProtocolError as exc:
            reject = neg.abort(reject_code(exc.reject_code), str(exc)[:200], clock())
            if reject is not None:
                with contextlib.suppress(StreamError):
                    await fs.write_frame(sealed(reject))
            raise RejectedError(str(exc.reject_code), f"provider broke the protocol: {exc}") from exc
        if isinstance(msg, Reject):
            raise RejectedError(str(msg.code), msg.message)
        return msg

    request = JobRequest(request_id=nonce().hex(), renter=key.public_key.wallet,
                         provider=offer.provider, offer_seq=offer.seq, **job)
    fs = await node.open_stream(peer, NEGOTIATE_PROTOCOL, max_frame_bytes=MAX_FRAME_BYTES,
                                read_timeout_s=STEP_READ_TIMEOUT_S)
    try:
        neg.send(request, clock())
        await fs.write_frame(sealed(request))
        quote = await receive(fs)
        assert isinstance(quote, Quote)
        if accept_quote is not None and not accept_quote(quote):
            reject = neg.abort(RejectCode.PRICE_TOO_HIGH, "quote declined", clock())
            if reject is not None:
                await fs.write_frame(sealed(reject))
            raise RejectedError(str(RejectCode.PRICE_TOO_HIGH), "we declined the quote")
        accept = neg.accept(await escrow.fund(quote), key, clock())
        await fs.write_frame(sealed(accept))
        agreement = await receive(fs)
        assert isinstance(agreement, Agreement)
        return NegotiationResult(agreement, request, quote, peer)
    except trio.TooSlowError:
        raise NetworkError("negotiation timed out") from None
    finally:
        await fs.close()
