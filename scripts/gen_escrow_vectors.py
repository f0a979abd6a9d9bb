"""Writes ``tests/vectors/escrow.json`` from the scenarios below, replayed by dgpu.protocol.

Run: ``.venv/bin/python scripts/gen_escrow_vectors.py`` (``--check`` fails if the file differs).
The scenarios are the source; the expected balances come from the reference math, and
``tests/protocol/test_escrow_vectors.py`` checks a hand-computed subset independently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from dgpu.protocol.escrow import MAX_FEE_BPS
from dgpu.protocol.escrow_vectors import World, apply_step, snapshot

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "escrow.json"
T = 1_700_000_000
M = 60
RATE = 23_834  # RTX 4090, 24 GiB, 450 W at the seed's prices, per minute, 6 decimals
INITIAL = {"renter": 1_000_000_000, "provider": 0, "treasury": 0, "vault": 0}


def op(at: int, by: str, action: str, **args: int) -> dict[str, Any]:
    step: dict[str, Any] = {"at": at, "by": by, "action": action}
    if args:
        step["args"] = args
    return step


def opened(at: int = T, rate: int = RATE, minutes: int = 60, deadline: int = T + 300) -> dict[str, Any]:
    return op(at, "renter", "open", rental_id=7, rate_per_minute=rate, max_minutes=minutes,
              start_deadline=deadline)


S = T + 60  # when most scenarios start

SCENARIOS: list[dict[str, Any]] = [
    {"name": "full-run-with-claims", "fee_bps": 500,
     "description": "60 minutes; claims at 10 and 30 minutes, a double claim, settlement by anyone after expiry",
     "steps": [opened(), op(S, "provider", "start"), op(S + 10 * M, "provider", "claim"),
               op(S + 10 * M + 59, "provider", "claim"), op(S + 30 * M + 30, "provider", "claim"),
               op(S + 59 * M, "stranger", "settle_expired"), op(S + 60 * M, "stranger", "settle_expired"),
               op(S + 61 * M, "provider", "claim")]},
    {"name": "early-close-by-renter", "fee_bps": 500,
     "description": "renter closes after 2 minutes and 5 seconds: 2 minutes paid, the rest refunded",
     "steps": [opened(), op(S, "provider", "start"), op(S + 2 * M + 5, "renter", "close"),
               op(S + 3 * M, "renter", "close")]},
    {"name": "provider-closes-after-claim", "fee_bps": 500,
     "description": "provider claims 5 minutes then closes at 7: 2 more paid, 53 refunded",
     "steps": [opened(), op(S, "provider", "start"), op(S + 5 * M, "provider", "claim"),
               op(S + 7 * M + 30, "provider", "close")]},
    {"name": "top-up-then-expiry", "fee_bps": 500,
     "description": "10 minutes, topped up by 5 before expiry, a top-up after expiry refused, settled",
     "steps": [opened(minutes=10), op(S, "provider", "start"), op(S + 8 * M, "renter", "top_up", extra_minutes=5),
               op(S + 10 * M, "provider", "claim"), op(S + 15 * M, "renter", "top_up", extra_minutes=5),
               op(S + 14 * M, "renter", "settle_expired"), op(S + 15 * M, "renter", "settle_expired")]},
    {"name": "never-started", "fee_bps": 500,
     "description": "the provider never starts; early refund refused; start after the deadline refused",
     "steps": [opened(), op(T + 10, "renter", "start"), op(T + 299, "renter", "refund_unstarted"),
               op(T + 300, "provider", "start"), op(T + 300, "stranger", "refund_unstarted"),
               op(T + 300, "renter", "refund_unstarted"), op(T + 400, "renter", "refund_unstarted")]},
    {"name": "clock-goes-backwards", "fee_bps": 500,
     "description": "a clock earlier than the last claim accrues nothing new and takes nothing back",
     "steps": [opened(), op(S, "provider", "start"), op(S + 5 * M, "provider", "claim"),
               op(S + 3 * M, "provider", "claim"), op(S - 100, "provider", "claim"),
               op(S + 2 * M, "renter", "close")]},
    {"name": "unauthorized-and-early-calls", "fee_bps": 500,
     "description": "strangers and wrong parties are refused; claims before start refused",
     "steps": [opened(), op(T + 1, "provider", "claim"), op(T + 2, "stranger", "start"),
               op(T + 3, "stranger", "close"), op(T + 4, "provider", "top_up", extra_minutes=1),
               op(T + 5, "renter", "claim"), op(T + 6, "provider", "start"),
               op(T + 7, "stranger", "claim"), op(T + 8, "renter", "top_up", extra_minutes=0),
               op(T + 9, "renter", "start"), op(T + 10, "stranger", "settle_expired"),
               op(T + 11, "renter", "refund_unstarted")]},
    {"name": "bad-open-arguments", "fee_bps": 500,
     "description": "zero rate, zero minutes, an overflowing deposit and a past deadline are refused",
     "steps": [opened(rate=0), opened(minutes=0), opened(rate=2**63, minutes=4),
               opened(deadline=T), opened(deadline=T - 1), opened(at=T + 1)]},
    {"name": "fee-rounding-per-minute-claims", "fee_bps": 500,
     "description": "rate 7 with a 5% fee claimed every minute: the fee is cumulative, never rounded per claim",
     "steps": [opened(rate=7, minutes=5), op(S, "provider", "start"),
               *[op(S + k * M, "provider", "claim") for k in range(1, 6)],
               op(S + 6 * M, "stranger", "settle_expired")]},
    {"name": "zero-fee", "fee_bps": 0,
     "description": "no platform fee: the provider gets every accrued minute",
     "steps": [opened(minutes=3), op(S, "provider", "start"), op(S + 3 * M, "stranger",
               "settle_expired")]},
    {"name": "max-fee", "fee_bps": MAX_FEE_BPS,
     "description": "the maximum 20% fee on a close after 4 minutes",
     "steps": [opened(rate=1_000_003, minutes=10), op(S, "provider", "start"),
               op(S + 4 * M + 59, "renter", "close")]},
    {"name": "close-before-start", "fee_bps": 500,
     "description": "the renter cancels before the provider starts: everything back; nothing works afterwards",
     "steps": [opened(), op(T + 30, "renter", "close"), op(T + 40, "provider", "start"),
               op(T + 50, "renter", "top_up", extra_minutes=1), op(T + 60, "renter", "close")]},
    {"name": "vault-funded-before-open", "fee_bps": 500, "initial": {**INITIAL, "vault": 5},
     "description": "someone sent 5 units to the rental's vault address before open: open works, the "
                    "accounting ignores them, and the close hands them to the renter (not counted as refunded)",
     "steps": [opened(), op(S, "provider", "start"), op(S + 2 * M, "provider", "claim"),
               op(S + 3 * M + 10, "renter", "close")]},
    {"name": "no-revival-after-close", "fee_bps": 500,
     "description": "a closed rental's id cannot be opened again (rental ids of a renter only increase)",
     "steps": [opened(), op(T + 30, "renter", "close"), opened(at=T + 40, deadline=T + 340),
               op(T + 50, "provider", "start")]},
    {"name": "top-up-before-start", "fee_bps": 500,
     "description": "a top-up before the start extends the rental; full run then settlement",
     "steps": [opened(minutes=2), op(T + 10, "renter", "top_up", extra_minutes=3), op(S, "provider", "start"),
               op(S + 5 * M + 1, "provider", "claim"), op(S + 5 * M + 2, "provider", "settle_expired")]},
]


def build() -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for scenario in SCENARIOS:
        initial = dict(scenario.get("initial", INITIAL))
        world = World(balances=dict(initial), fee_bps=scenario["fee_bps"])
        steps = []
        for step in scenario["steps"]:
            world, error = apply_step(world, step)
            steps.append({**step, "expect": {"error": error, **snapshot(world)}})
        out.append({"name": scenario["name"], "description": scenario["description"],
                    "fee_bps": scenario["fee_bps"], "initial": initial, "steps": steps})
    return {"version": 1, "decimals": 6, "max_fee_bps": MAX_FEE_BPS,
            "mint_note": "balances are base units of a 6-decimal mint", "scenarios": out}


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=False) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else "tests/vectors/escrow.json is stale: regenerate it")
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(SCENARIOS)} scenarios)")
