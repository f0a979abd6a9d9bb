"""The escrow math: unit cases and property tests over random histories."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgpu.protocol import escrow as e
from dgpu.protocol.errors import EscrowError, EscrowErrorCode

T = 1_700_000_000


def opened(rate: int = 1000, minutes: int = 10, fee_bps: int = 500) -> e.Escrow:
    return e.open_escrow(renter="r", provider="p", mint="m", rental_id=1, rate_per_minute=rate,
                         max_minutes=minutes, start_deadline=T + 300, fee_bps=fee_bps, now=T).escrow


def test_open_deposits_rate_times_minutes() -> None:
    outcome = e.open_escrow(renter="r", provider="p", mint="m", rental_id=1, rate_per_minute=7,
                            max_minutes=9, start_deadline=T + 1, fee_bps=500, now=T)
    assert outcome.escrow.deposited == 63 and outcome.escrow.vault == 63
    assert outcome.transfers == (e.Transfer(e.Party.RENTER, e.Party.VAULT, 63),)


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"paused": True}, EscrowErrorCode.PAUSED),
    ({"fee_bps": 2001}, EscrowErrorCode.FEE_TOO_HIGH),
    ({"rate_per_minute": 0}, EscrowErrorCode.INVALID_AMOUNT),
    ({"max_minutes": 2**32}, EscrowErrorCode.INVALID_AMOUNT),
    ({"rate_per_minute": 2**63, "max_minutes": 2}, EscrowErrorCode.OVERFLOW),
    ({"start_deadline": T}, EscrowErrorCode.INVALID_DEADLINE),
    ({"rental_id": 0}, EscrowErrorCode.RENTAL_ID_USED),  # 0 is never above a renter's last id
    ({"last_rental_id": 1}, EscrowErrorCode.RENTAL_ID_USED),  # the same id again
    ({"last_rental_id": 9}, EscrowErrorCode.RENTAL_ID_USED),  # a lower id
    ({"paused": True, "last_rental_id": 1}, EscrowErrorCode.PAUSED),  # checked before the id
])
def test_open_refusals(kwargs: dict[str, int], code: EscrowErrorCode) -> None:
    args: dict[str, object] = dict(renter="r", provider="p", mint="m", rental_id=1, rate_per_minute=5,
                                   max_minutes=5, start_deadline=T + 60, fee_bps=500, now=T)
    args.update(kwargs)
    with pytest.raises(EscrowError) as info:
        e.open_escrow(**args)  # type: ignore[arg-type]
    assert info.value.code is code


def test_a_started_but_unfinished_minute_costs_nothing() -> None:
    esc = e.start(opened(), "p", T + 10).escrow
    assert e.accrued_minutes(esc, T + 10 + 59) == 0
    assert e.accrued_minutes(esc, T + 10 + 60) == 1
    assert e.accrued_minutes(esc, T + 10 + 10_000) == 10  # clamped at max
    assert e.accrued_minutes(esc, T) == 0                 # clock before the start
    assert e.expires_at(esc) == T + 10 + 600
    closed = e.close(esc, "r", T + 10 + 119)
    assert closed.escrow.paid + closed.escrow.fee_paid == 1000  # one minute
    assert closed.escrow.refunded == 9000


def test_fee_is_cumulative_however_claims_are_split() -> None:
    esc = e.start(opened(rate=7, minutes=5), "p", T).escrow
    for minute in range(1, 6):
        esc = e.claim(esc, "p", T + minute * 60).escrow
    assert esc.fee_paid == 7 * 5 * 500 // 10_000 == 1
    assert esc.paid == 34


def test_failed_instructions_change_nothing() -> None:
    esc = opened()
    for fn in (e.claim, e.settle_expired):
        with pytest.raises(EscrowError):
            fn(esc, "p", T)
    assert esc == opened()


# -- property tests ------------------------------------------------------------------------------

ACTIONS = st.sampled_from(["start", "claim", "top_up", "close", "settle_expired", "refund_unstarted"])
ACTORS = st.sampled_from(["r", "p", "x"])


@st.composite
def histories(draw: st.DrawFn) -> tuple[e.Escrow, list[tuple[str, str, int, int]]]:
    rate = draw(st.integers(1, 10**12))
    minutes = draw(st.integers(1, 10_000))
    fee = draw(st.integers(0, e.MAX_FEE_BPS))
    esc = e.open_escrow(renter="r", provider="p", mint="m", rental_id=1, rate_per_minute=rate,
                        max_minutes=minutes, start_deadline=T + draw(st.integers(1, 3600)), fee_bps=fee,
                        now=T).escrow
    steps = draw(st.lists(st.tuples(ACTIONS, ACTORS, st.integers(-600, 10**6), st.integers(0, 100)),
                          max_size=30))
    return esc, steps


@settings(max_examples=400, deadline=None)
@given(histories())
def test_conservation_over_random_histories(history: tuple[e.Escrow, list[tuple[str, str, int, int]]]) -> None:
    esc, steps = history
    balances = {"renter": 0, "provider": 0, "treasury": 0, "vault": esc.deposited}
    deposited_total = esc.deposited
    now = T
    for action, actor, dt, extra in steps:
        now = T + dt  # the clock may jump backwards
        before = esc
        try:
            if action == "top_up":
                outcome = e.top_up(esc, actor, now, extra)
            else:
                outcome = getattr(e, action)(esc, actor, now)
        except EscrowError:
            assert esc == before
            continue
        for t in outcome.transfers:
            assert t.amount > 0
            if t.source is e.Party.RENTER:
                deposited_total += t.amount
            else:
                balances[t.source.value] -= t.amount
            balances[t.destination.value] += t.amount
        esc = outcome.escrow
        # invariants after every step
        assert min(balances.values()) >= 0
        assert balances["vault"] == esc.vault >= 0
        assert esc.deposited == esc.rate_per_minute * esc.max_minutes == deposited_total
        assert esc.paid + esc.fee_paid + esc.refunded + esc.vault == esc.deposited
        assert esc.paid + esc.fee_paid <= esc.claimed_minutes * esc.rate_per_minute
        assert esc.claimed_minutes <= esc.max_minutes
        assert esc.fee_paid == esc.claimed_minutes * esc.rate_per_minute * esc.fee_bps // 10_000
        assert balances["provider"] == esc.paid and balances["treasury"] == esc.fee_paid
    if esc.status is e.EscrowStatus.OPEN:
        # every open escrow can always be exited: by the renter closing it
        esc = e.close(esc, "r", now).escrow
    assert esc.status is e.EscrowStatus.CLOSED and esc.vault == 0
    assert esc.paid + esc.fee_paid + esc.refunded == esc.deposited


@given(st.integers(1, 10**9), st.integers(1, 1000), st.integers(0, 2000), st.integers(0, 2000))
def test_closing_pays_exactly_the_accrued_minutes(rate: int, minutes: int, fee: int, elapsed_s: int) -> None:
    esc = e.start(opened(rate, minutes, fee), "p", T).escrow
    closed = e.close(esc, "r", T + elapsed_s).escrow
    accrued = min(elapsed_s // 60, minutes)
    assert closed.paid + closed.fee_paid == accrued * rate
    assert closed.refunded == (minutes - accrued) * rate
    assert closed.fee_paid == accrued * rate * fee // 10_000


def test_top_up_only_before_expiry() -> None:
    esc = e.start(opened(minutes=2), "p", T).escrow
    grown = e.top_up(esc, "r", T + 119, 3).escrow
    assert grown.max_minutes == 5 and grown.deposited == 5000
    with pytest.raises(EscrowError) as info:
        e.top_up(esc, "r", T + 120, 1)
    assert info.value.code is EscrowErrorCode.EXPIRED
    assert replace(esc) == esc


def test_dust_in_the_vault_goes_to_the_renter_only_when_closed() -> None:
    esc = opened()
    assert e.sweep_dust(esc, esc.vault + 5) == ()
    closed = e.close(esc, "r", T + 1).escrow
    assert e.sweep_dust(closed, 5) == (e.Transfer(e.Party.VAULT, e.Party.RENTER, 5),)
    assert e.sweep_dust(closed, 0) == ()
