"""Random action sequences against the dev ledger model (in-process, no HTTP).

The reference is ``dgpu.protocol.escrow_vectors.apply_step`` (the pure rules): after every step the
ledger's balances, escrow and refusal agree with it, conservation holds, and a closed escrow paid
out exactly what was deposited.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgpu.contracts.devledger.messages import (
    ClaimRequest,
    CloseRequest,
    FaucetRequest,
    LedgerRequest,
    OpenRequest,
    RefundUnstartedRequest,
    SettleExpiredRequest,
    StartRequest,
    TopUpRequest,
)
from dgpu.contracts.devledger.model import DevLedger, DevLedgerConfig, escrow_address
from dgpu.contracts.errors import EscrowRefused
from dgpu.protocol import escrow_vectors as ref
from dgpu.protocol.escrow import EscrowStatus

from .conftest import KEYS

WALLETS = {name: key.public_key.wallet for name, key in KEYS.items()}
T0 = 1_700_000_000
INITIAL = 50_000_000
LEDGER = "prop"

steps = st.lists(
    st.tuples(
        st.sampled_from(ref.ACTORS),
        st.sampled_from(ref.ACTIONS[1:]),
        st.integers(min_value=-120, max_value=1500),  # seconds since the previous step (may go back)
        st.integers(min_value=0, max_value=40),  # top_up's extra minutes
    ),
    max_size=14,
)


def _request(action: str, escrow: str, extra: int) -> LedgerRequest:
    if action == "top_up":
        return TopUpRequest(ledger=LEDGER, escrow=escrow, extra_minutes=extra)
    cls = {"start": StartRequest, "claim": ClaimRequest, "close": CloseRequest,
           "settle_expired": SettleExpiredRequest, "refund_unstarted": RefundUnstartedRequest}[action]
    return cls(ledger=LEDGER, escrow=escrow)  # type: ignore[no-any-return]


def _observed(ledger: DevLedger, address: str) -> dict[str, Any]:
    balances = {"renter": ledger.balance(WALLETS["renter"]), "provider": ledger.balance(WALLETS["provider"]),
                "treasury": ledger.balance(ledger.treasury), "vault": ledger.balance(address)}
    e, _, _ = ledger.escrow(address)
    return {"balances": balances, "escrow": {
        "status": e.status.value, "max_minutes": e.max_minutes, "deposited": e.deposited,
        "claimed_minutes": e.claimed_minutes, "started_at": e.started_at, "paid": e.paid,
        "fee_paid": e.fee_paid, "refunded": e.refunded}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.integers(min_value=1, max_value=50_000),
    minutes=st.integers(min_value=1, max_value=90),
    fee_bps=st.integers(min_value=0, max_value=2000),
    deadline=st.integers(min_value=1, max_value=900),
    actions=steps,
)
def test_random_sequences_match_the_rules(rate: int, minutes: int, fee_bps: int, deadline: int,
                                          actions: list[tuple[str, str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = DevLedger(DevLedgerConfig(db_path=Path(tmp) / "l.sqlite3", ledger_id=LEDGER, fee_bps=fee_bps,
                                           test_mode=True, faucet_max=INITIAL))
        try:
            ledger.execute(WALLETS["renter"], FaucetRequest(ledger=LEDGER, amount=INITIAL), now=T0)
            address = escrow_address(WALLETS["renter"], WALLETS["provider"], 7)
            open_step = {"at": T0, "by": "renter", "action": "open", "args": {
                "rental_id": 7, "rate_per_minute": rate, "max_minutes": minutes, "start_deadline": T0 + deadline}}
            world = ref.World(balances={"renter": INITIAL, "provider": 0, "treasury": 0, "vault": 0}, fee_bps=fee_bps)
            world, error = ref.apply_step(world, open_step)
            assert error is None
            ledger.execute(WALLETS["renter"], OpenRequest(
                ledger=LEDGER, provider=WALLETS["provider"], rental_id=7, rate_per_minute=rate,
                max_minutes=minutes, start_deadline=T0 + deadline), now=T0)
            now = T0
            for actor, action, dt, extra in actions:
                now += dt
                step = {"at": now, "by": actor, "action": action, "args": {"extra_minutes": extra}}
                if world.escrow is not None and action == "top_up" and \
                        world.escrow.deposited + rate * extra > world.balances["renter"] + world.escrow.deposited:
                    continue  # the renter cannot afford it: a funds error, outside the pure rules
                world, expected_error = ref.apply_step(world, step)
                try:
                    out = ledger.execute(WALLETS[actor], _request(action, address, extra), now=now)
                except EscrowRefused as exc:
                    got_error: str | None = exc.code.value
                else:
                    got_error = None
                    assert out.now == now
                assert got_error == expected_error, (actor, action, now)
                assert _observed(ledger, address) == ref.snapshot(world)
                ledger.audit()
                e, vault, _ = ledger.escrow(address)
                if e.status is EscrowStatus.CLOSED:
                    assert e.paid + e.fee_paid + e.refunded == e.deposited and vault == 0
                assert sum(_observed(ledger, address)["balances"].values()) == INITIAL
        finally:
            ledger.close()
