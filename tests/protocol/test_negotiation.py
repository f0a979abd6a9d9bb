"""Every transition of the negotiation machine, legal and illegal, for both roles."""

from __future__ import annotations

import itertools

import pytest

from dgpu.protocol.envelope import sign_detached
from dgpu.protocol.errors import LocalProtocolError, RemoteProtocolError, SignatureError, TimeoutError_
from dgpu.protocol.messages import Accept, Agreement, JobRequest, Quote, Reject, RejectCode
from dgpu.protocol.negotiation import (
    TRANSITIONS,
    UNCHECKED,
    Negotiation,
    NegotiationMessage,
    Role,
    State,
    agreement_terms,
)

from .conftest import ESCROW, MALLORY, NOW, PROVIDER, RENTER, make_quote, make_request

REQUEST = make_request()
QUOTE = make_quote(REQUEST)
TERMS = agreement_terms(REQUEST, QUOTE, ESCROW)
ACCEPT = Accept(request_id=REQUEST.request_id, quote_id=QUOTE.quote_id, escrow=ESCROW,
                renter_sig=sign_detached(TERMS, RENTER))
AGREEMENT = Agreement(terms=TERMS, renter_sig=ACCEPT.renter_sig, provider_sig=sign_detached(TERMS, PROVIDER))
REJECT = Reject(request_id=REQUEST.request_id, code=RejectCode.NO_CAPACITY)
SAMPLES: dict[str, NegotiationMessage] = {
    "job_request": REQUEST, "quote": QUOTE, "accept": ACCEPT, "agreement": AGREEMENT, "reject": REJECT,
}
SENDERS = {"job_request": Role.RENTER, "quote": Role.PROVIDER, "accept": Role.RENTER, "agreement": Role.PROVIDER}

#: the message sequence that drives a machine into each state
PATHS: dict[State, list[str]] = {
    State.IDLE: [], State.REQUESTED: ["job_request"], State.QUOTED: ["job_request", "quote"],
    State.ACCEPTED: ["job_request", "quote", "accept"], State.AGREED: ["job_request", "quote", "accept", "agreement"],
    State.REJECTED: ["job_request", "reject"],
}


def driven_to(state: State, role: Role) -> Negotiation:
    machine = Negotiation(role)
    for index, name in enumerate(PATHS[state]):
        sender = SENDERS.get(name, Role.PROVIDER if index == 1 else Role.RENTER)
        if sender is role:
            machine.send(SAMPLES[name], NOW)
        else:
            machine.receive(SAMPLES[name], NOW, signer=UNCHECKED)
    assert machine.state is state
    return machine


CASES = list(itertools.product(PATHS, Role, [Role.RENTER, Role.PROVIDER], SAMPLES))


@pytest.mark.parametrize(("state", "role", "sender", "name"), CASES)
def test_transition_table(state: State, role: Role, sender: Role, name: str) -> None:
    machine = driven_to(state, role)
    message = SAMPLES[name]
    legal = TRANSITIONS[state].get((sender, name))
    if sender is role:
        if legal is None:
            with pytest.raises(LocalProtocolError):
                machine.send(message, NOW)
            assert machine.state is state  # unchanged
        else:
            machine.send(message, NOW)
            assert machine.state is legal
    else:
        if legal is None:
            with pytest.raises(RemoteProtocolError) as info:
                machine.receive(message, NOW, signer=UNCHECKED)
            assert info.value.reject_code == RejectCode.PROTOCOL_ERROR
            assert machine.state is state
        else:
            assert machine.receive(message, NOW, signer=UNCHECKED) is legal


def test_full_negotiation_between_two_machines_with_helpers() -> None:
    renter, provider = Negotiation(Role.RENTER), Negotiation(Role.PROVIDER)
    renter.send(REQUEST, NOW)
    provider.receive(REQUEST, NOW, signer=RENTER.public_key)
    provider.send(QUOTE, NOW + 1)
    renter.receive(QUOTE, NOW + 1, signer=PROVIDER.public_key)
    accept = renter.accept(ESCROW, RENTER, NOW + 2)
    provider.receive(accept, NOW + 2, signer=RENTER.public_key)
    agreement = provider.agree(PROVIDER, NOW + 3)
    assert renter.receive(agreement, NOW + 3, signer=PROVIDER.public_key) is State.AGREED
    assert provider.state is State.AGREED and renter.agreement == provider.agreement
    assert agreement.agreement_id == AGREEMENT.agreement_id


def test_message_signed_by_a_third_party_is_refused() -> None:
    provider = Negotiation(Role.PROVIDER)
    with pytest.raises(SignatureError):
        provider.receive(REQUEST, NOW, signer=MALLORY.public_key)
    assert provider.state is State.IDLE


def test_quote_above_the_renters_maximum_is_refused() -> None:
    renter = driven_to(State.REQUESTED, Role.RENTER)
    greedy = make_quote(REQUEST, rate_per_minute=30_001, deposit=300_010)
    with pytest.raises(RemoteProtocolError) as info:
        renter.receive(greedy, NOW, signer=UNCHECKED)
    assert info.value.reject_code == RejectCode.PRICE_TOO_HIGH
    assert renter.state is State.REQUESTED


@pytest.mark.parametrize("change", [{"max_minutes": 11, "deposit": 23_834 * 11}, {"request_id": "ee" * 8},
                                    {"expires_at": NOW}, {"provider": MALLORY.public_key.wallet}])
def test_inconsistent_quotes_are_refused(change: dict[str, object]) -> None:
    renter = driven_to(State.REQUESTED, Role.RENTER)
    with pytest.raises(RemoteProtocolError):
        renter.receive(make_quote(REQUEST, **change), NOW, signer=UNCHECKED)
    assert renter.state is State.REQUESTED


def test_accept_with_a_forged_signature_is_refused() -> None:
    provider = driven_to(State.QUOTED, Role.PROVIDER)
    forged = ACCEPT.model_copy(update={"renter_sig": sign_detached(TERMS, MALLORY)})
    with pytest.raises(SignatureError):
        provider.receive(forged, NOW, signer=UNCHECKED)
    other_escrow = ACCEPT.model_copy(update={"escrow": ESCROW.model_copy(update={"rental_id": 8})})
    with pytest.raises(SignatureError):  # the signature covered rental 7
        provider.receive(other_escrow, NOW, signer=UNCHECKED)
    assert provider.state is State.QUOTED


def test_accept_after_the_quote_expired_is_refused() -> None:
    provider = driven_to(State.QUOTED, Role.PROVIDER)
    with pytest.raises(RemoteProtocolError) as info:
        provider.receive(ACCEPT, QUOTE.expires_at, signer=UNCHECKED)
    assert info.value.reject_code in (RejectCode.QUOTE_EXPIRED, RejectCode.TIMEOUT)


def test_agreement_with_altered_terms_or_signature_is_refused() -> None:
    renter = driven_to(State.ACCEPTED, Role.RENTER)
    cheaper = TERMS.model_copy(update={"max_minutes": 9})
    altered = AGREEMENT.model_copy(update={"terms": cheaper, "provider_sig": sign_detached(cheaper, PROVIDER)})
    with pytest.raises(RemoteProtocolError):
        renter.receive(altered, NOW, signer=UNCHECKED)
    by_mallory = AGREEMENT.model_copy(update={"provider_sig": sign_detached(TERMS, MALLORY)})
    with pytest.raises(SignatureError):
        renter.receive(by_mallory, NOW, signer=UNCHECKED)
    assert renter.state is State.ACCEPTED


def test_timeouts_are_events_fed_in() -> None:
    renter = Negotiation(Role.RENTER, step_timeout=30)
    renter.send(REQUEST, NOW)
    assert not renter.check_timeout(NOW + 29)
    assert renter.check_timeout(NOW + 30) and renter.state is State.TIMED_OUT
    late = Negotiation(Role.RENTER, step_timeout=30)
    late.send(REQUEST, NOW)
    with pytest.raises(TimeoutError_):
        late.receive(QUOTE, NOW + 31, signer=UNCHECKED)
    assert late.state is State.TIMED_OUT
    slow = driven_to(State.REQUESTED, Role.PROVIDER)
    with pytest.raises(LocalProtocolError, match="timed out"):
        slow.send(QUOTE, NOW + 1000)


def test_abort_returns_the_reject_to_send() -> None:
    provider = driven_to(State.REQUESTED, Role.PROVIDER)
    reject = provider.abort(RejectCode.BUSY, "try later", NOW)
    assert isinstance(reject, Reject) and reject.request_id == REQUEST.request_id
    assert provider.state is State.REJECTED
    assert provider.abort(RejectCode.BUSY, "again", NOW) is None
    assert Negotiation(Role.PROVIDER).abort(RejectCode.BUSY, "nothing yet", NOW) is None


def test_helpers_refuse_out_of_order_use() -> None:
    with pytest.raises(LocalProtocolError):
        Negotiation(Role.RENTER).accept(ESCROW, RENTER, NOW)
    with pytest.raises(LocalProtocolError):
        Negotiation(Role.PROVIDER).agree(PROVIDER, NOW)
    with pytest.raises(ValueError):
        Negotiation(Role.RENTER, step_timeout=0)


def test_job_request_type_is_the_only_opening() -> None:
    assert isinstance(REQUEST, JobRequest) and isinstance(QUOTE, Quote)
    assert set(TRANSITIONS[State.IDLE]) == {(Role.RENTER, "job_request")}


def test_a_quote_with_a_fee_above_the_escrow_maximum_is_refused_by_both_sides() -> None:
    from dgpu.protocol.escrow import MAX_FEE_BPS

    greedy = QUOTE.model_copy(update={"fee_bps": 9000})
    renter = Negotiation(Role.RENTER)
    renter.send(REQUEST, NOW)
    with pytest.raises(RemoteProtocolError, match=f"maximum {MAX_FEE_BPS}"):
        renter.receive(greedy, NOW + 1, signer=PROVIDER.public_key)
    assert renter.state is State.REQUESTED
    provider = Negotiation(Role.PROVIDER)
    provider.receive(REQUEST, NOW, signer=RENTER.public_key)
    with pytest.raises(LocalProtocolError):
        provider.send(greedy, NOW + 1)


def test_receive_demands_a_signer_or_an_explicit_opt_out() -> None:
    provider = Negotiation(Role.PROVIDER)
    with pytest.raises(TypeError):
        provider.receive(REQUEST, NOW)  # type: ignore[call-arg]
    assert provider.receive(REQUEST, NOW, signer=UNCHECKED) is State.REQUESTED


def test_quote_for_request_fills_what_the_request_fixes() -> None:
    quote = Quote.for_request(REQUEST, quote_id="ab" * 8, rate_per_minute=7, fee_bps=500, mint=QUOTE.mint,
                              ledger="dev", start_deadline=NOW + 300, expires_at=NOW + 60)
    assert (quote.request_id, quote.provider, quote.max_minutes) == (
        REQUEST.request_id, REQUEST.provider, REQUEST.max_minutes)
    assert quote.deposit == 7 * REQUEST.max_minutes
