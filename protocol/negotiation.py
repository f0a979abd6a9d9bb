"""The negotiation: a sans-I/O, table-driven state machine shared by renter and provider.

Theory of operation. Both peers run a :class:`Negotiation` for the same exchange, each in its
own role. Every message moves both machines through the same table::

    IDLE ──JobRequest(R)──▶ REQUESTED ──Quote(P)──▶ QUOTED ──Accept(R)──▶ ACCEPTED ──Agreement(P)──▶ AGREED
                              │                      │                      │
                              └──Reject(P)──▶ REJECTED ◀──Reject(R)──┘      └──Reject(P)──▶ REJECTED

(R) = sent by the renter, (P) = sent by the provider. ``send`` is for our own moves: an illegal
one raises :class:`LocalProtocolError` and leaves the state unchanged. ``receive`` is for the
peer's: an illegal or inconsistent one raises :class:`RemoteProtocolError` (whose
``reject_code`` says what to answer), also leaving the state unchanged; the caller then calls
:meth:`Negotiation.abort` to get the ``Reject`` to send. Time is an argument: each step must
complete within ``step_timeout`` seconds, and :meth:`Negotiation.check_timeout` (or a late
``receive``) moves the machine to ``TIMED_OUT``. Signatures on the Agreement are verified here;
envelope signatures are checked by :func:`dgpu.protocol.envelope.open_envelope` before this.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Final

from .envelope import sign_detached, verify_detached
from .errors import LocalProtocolError, RemoteProtocolError, SignatureError, TimeoutError_
from .escrow import MAX_FEE_BPS
from .keys import PublicKey, SigningKey
from .messages import (
    Accept,
    Agreement,
    AgreementTerms,
    EscrowRef,
    JobRequest,
    Quote,
    Reject,
    RejectCode,
    digest,
)

__all__ = [
    "TRANSITIONS",
    "UNCHECKED",
    "Negotiation",
    "NegotiationMessage",
    "Role",
    "State",
    "Unchecked",
    "agreement_terms",
]

NegotiationMessage = JobRequest | Quote | Accept | Agreement | Reject


class Role(StrEnum):
    RENTER = "renter"
    PROVIDER = "provider"

    @property
    def peer(self) -> Role:
        return Role.PROVIDER if self is Role.RENTER else Role.RENTER


class State(StrEnum):
    IDLE = "idle"
    """Nothing exchanged yet."""
    REQUESTED = "requested"
    """The renter's JobRequest is out; the provider must quote or reject."""
    QUOTED = "quoted"
    """A binding quote is out; the renter must accept (with a funded escrow) or decline."""
    ACCEPTED = "accepted"
    """The renter accepted and signed the terms; the provider must countersign or reject."""
    AGREED = "agreed"
    """Terminal: both signed the Agreement; the job may be submitted."""
    REJECTED = "rejected"
    """Terminal: one side refused."""
    TIMED_OUT = "timed_out"
    """Terminal: a step's deadline passed."""

    @property
    def terminal(self) -> bool:
        return self in (State.AGREED, State.REJECTED, State.TIMED_OUT)


#: TRANSITIONS[state][(sender role, message type)] -> next state
TRANSITIONS: Final[dict[State, dict[tuple[Role, str], State]]] = {
    State.IDLE: {(Role.RENTER, "job_request"): State.REQUESTED},
    State.REQUESTED: {(Role.PROVIDER, "quote"): State.QUOTED, (Role.PROVIDER, "reject"): State.REJECTED},
    State.QUOTED: {(Role.RENTER, "accept"): State.ACCEPTED, (Role.RENTER, "reject"): State.REJECTED},
    State.ACCEPTED: {(Role.PROVIDER, "agreement"): State.AGREED, (Role.PROVIDER, "reject"): State.REJECTED},
    State.AGREED: {},
    State.REJECTED: {},
    State.TIMED_OUT: {},
}


def agreement_terms(request: JobRequest, quote: Quote, escrow: EscrowRef) -> AgreementTerms:
    """The terms both parties sign, derived identically on both sides."""
    return AgreementTerms(
        request_id=request.request_id, quote_id=quote.quote_id, job_digest=digest(request),
        renter=request.renter, provider=request.provider, rate_per_minute=quote.rate_per_minute,
        max_minutes=quote.max_minutes, deposit=quote.deposit, fee_bps=quote.fee_bps, mint=quote.mint,
        start_deadline=quote.start_deadline, executor=request.executor, escrow=escrow,
    )


class Unchecked(Enum):
    """The explicit opt-out of :meth:`Negotiation.receive`'s counterparty check."""

    UNCHECKED = "unchecked"


#: ``Negotiation.receive(msg, now, signer=UNCHECKED)``: the message was not signed (simulations)
UNCHECKED: Final = Unchecked.UNCHECKED


class Negotiation:
    """One negotiation seen from one side. Not thread-safe; one owner drives it."""

    def __init__(self, role: Role, *, step_timeout: int = 30) -> None:
        if step_timeout <= 0:
            raise ValueError("step_timeout must be positive")
        self.role = role
        self.step_timeout = step_timeout
        self.state = State.IDLE
        self.deadline: int | None = None
        self.request: JobRequest | None = None
        self.quote: Quote | None = None
        self.accept_msg: Accept | None = None
        self.agreement: Agreement | None = None
        self.reject: Reject | None = None
        #: the terms both sign, derived once the Accept is recorded
        self.terms: AgreementTerms | None = None

    # -- our moves -------------------------------------------------------------------------
    def send(self, message: NegotiationMessage, now: int) -> None:
        """Record our own move; :class:`LocalProtocolError` (state unchanged) if illegal."""
        next_state = self._legal_own_move(message, now)
        try:
            terms = self._check(message, now, sender=self.role)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None
        self._advance(message, next_state, now, terms)

    def _legal_own_move(self, message: NegotiationMessage, now: int) -> State:
        next_state = TRANSITIONS[self.state].get((self.role, message.type))
        if next_state is None:
            raise LocalProtocolError(f"a {self.role} cannot send {message.type} in state {self.state}")
        if self.deadline is not None and now >= self.deadline and self.state is not State.IDLE:
            raise LocalProtocolError(f"too late to send {message.type}: the step timed out")
        return next_state

    def accept(self, escrow: EscrowRef, key: SigningKey, now: int) -> Accept:
        """Renter: accept the quote with a funded escrow, signing the terms."""
        if self.request is None or self.quote is None:
            raise LocalProtocolError("nothing to accept yet")
        terms = agreement_terms(self.request, self.quote, escrow)
        message = Accept(request_id=self.request.request_id, quote_id=self.quote.quote_id,
                         escrow=escrow, renter_sig=sign_detached(terms, key))
        # built here from what the machine holds: consistent by construction, so not re-checked
        self._advance(message, self._legal_own_move(message, now), now, terms)
        return message

    def agree(self, key: SigningKey, now: int) -> Agreement:
        """Provider: countersign the accepted terms."""
        if self.terms is None or self.accept_msg is None:
            raise LocalProtocolError("nothing accepted yet")
        message = Agreement(terms=self.terms, renter_sig=self.accept_msg.renter_sig,
                            provider_sig=sign_detached(self.terms, key))
        self._advance(message, self._legal_own_move(message, now), now, self.terms)
        return message

    def abort(self, code: RejectCode, message: str, now: int) -> Reject | None:
        """End the negotiation from our side; returns the Reject to send (``None`` if terminal
        or if nothing was requested yet, when there is no request id to answer)."""
        del now
        if self.state.terminal or self.request is None:
            return None
        reject = Reject(request_id=self.request.request_id, code=code, message=message[:512])
        self.state, self.reject, self.deadline = State.REJECTED, reject, None
        return reject

    # -- the peer's moves ------------------------------------------------------------------
    def receive(self, message: NegotiationMessage, now: int, *, signer: PublicKey | Unchecked) -> State:
        """Feed the peer's message; :class:`RemoteProtocolError` (state unchanged) if refused.

        ``signer`` is the envelope's verified signer (``Opened.signer``); it must be the
        counterparty. Pass :data:`UNCHECKED` only where the message was never signed (a
        simulation that skips envelopes): the counterparty check is then skipped, on purpose."""
        if self.check_timeout(now):
            raise TimeoutError_(f"{message.type} arrived after the step deadline")
        sender = self.role.peer
        next_state = TRANSITIONS[self.state].get((sender, message.type))
        if next_state is None:
            raise RemoteProtocolError(f"a {sender} may not send {message.type} in state {self.state}",
                                      reject_code=RejectCode.PROTOCOL_ERROR)
        if signer is not UNCHECKED:
            expected = message.renter if isinstance(message, JobRequest) else self._party(sender)
            if signer.wallet != expected:
                raise SignatureError(f"{message.type} was signed by {signer.wallet}, not the {sender}")
        terms = self._check(message, now, sender=sender)
        self._advance(message, next_state, now, terms)
        return self.state

    def check_timeout(self, now: int) -> bool:
        """Move to TIMED_OUT if the current step's deadline passed; True if timed out."""
        if self.state is State.TIMED_OUT:
            return True
        if not self.state.terminal and self.deadline is not None and now >= self.deadline:
            self.state, self.deadline = State.TIMED_OUT, None
            return True
        return False

    # -- shared ----------------------------------------------------------------------------
    def _party(self, role: Role) -> str:
        assert self.request is not None  # every message after IDLE follows the request
        return self.request.renter if role is Role.RENTER else self.request.provider

    def _check(self, message: NegotiationMessage, now: int, *, sender: Role) -> AgreementTerms | None:
        """Consistency with what came before; raises RemoteProtocolError with the reject code.
        Returns the agreement terms an Accept implies."""
        del sender
        if isinstance(message, JobRequest):
            return None
        request = self.request
        assert request is not None
        echoed = message.terms.request_id if isinstance(message, Agreement) else message.request_id
        if echoed != request.request_id:
            raise RemoteProtocolError("request_id does not echo the request",
                                      reject_code=RejectCode.PROTOCOL_ERROR)
        if isinstance(message, Quote):
            self._check_quote(request, message, now)
        elif isinstance(message, Accept):
            assert self.quote is not None
            if message.quote_id != self.quote.quote_id:
                raise RemoteProtocolError("accept names another quote", reject_code=RejectCode.PROTOCOL_ERROR)
            if now >= self.quote.expires_at:
                raise RemoteProtocolError("the quote expired", reject_code=RejectCode.QUOTE_EXPIRED)
            terms = agreement_terms(request, self.quote, message.escrow)
            verify_detached(terms, message.renter_sig, PublicKey.from_wallet(request.renter))
            return terms
        elif isinstance(message, Agreement):
            assert self.terms is not None and self.accept_msg is not None
            expected = self.terms
            if message.terms != expected:
                raise RemoteProtocolError("agreement terms differ from the accepted quote",
                                          reject_code=RejectCode.PROTOCOL_ERROR)
            if message.renter_sig != self.accept_msg.renter_sig:
                raise SignatureError("agreement carries a different renter signature")
            verify_detached(expected, message.provider_sig, PublicKey.from_wallet(request.provider))
        return None

    @staticmethod
    def _check_quote(request: JobRequest, quote: Quote, now: int) -> None:
        if quote.fee_bps > MAX_FEE_BPS:  # the escrow would refuse it; a renter must never sign it
            raise RemoteProtocolError(f"quoted fee {quote.fee_bps} bps exceeds the maximum {MAX_FEE_BPS}",
                                      reject_code=RejectCode.PROTOCOL_ERROR)
        if quote.provider != request.provider:
            raise RemoteProtocolError("quote from another provider", reject_code=RejectCode.PROTOCOL_ERROR)
        if quote.rate_per_minute > request.max_price_per_minute:
            raise RemoteProtocolError("quoted rate exceeds the request's maximum price",
                                      reject_code=RejectCode.PRICE_TOO_HIGH)
        if quote.max_minutes != request.max_minutes:
            raise RemoteProtocolError("quoted minutes differ from the request",
                                      reject_code=RejectCode.PROTOCOL_ERROR)
        if quote.expires_at <= now or quote.start_deadline <= now:
            raise RemoteProtocolError("quote already expired", reject_code=RejectCode.QUOTE_EXPIRED)

    def _advance(self, message: NegotiationMessage, next_state: State, now: int,
                 terms: AgreementTerms | None) -> None:
        if terms is not None:
            self.terms = terms
        if isinstance(message, JobRequest):
            self.request = message
        elif isinstance(message, Quote):
            self.quote = message
        elif isinstance(message, Accept):
            self.accept_msg = message
        elif isinstance(message, Agreement):
            self.agreement = message
        else:
            self.reject = message
        self.state = next_state
        self.deadline = None if next_state.terminal else now + self.step_timeout
