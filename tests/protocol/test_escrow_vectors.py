"""The shared vectors: the committed file is current, every scenario replays, key numbers by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from dgpu.protocol.escrow_vectors import World, apply_step, snapshot

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "escrow.json").read_text())
SCENARIOS = {s["name"]: s for s in VECTORS["scenarios"]}


def test_committed_vectors_match_the_generator() -> None:
    spec = importlib.util.spec_from_file_location("gen_escrow_vectors", ROOT / "scripts" / "gen_escrow_vectors.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(module.render()) == VECTORS, "run scripts/gen_escrow_vectors.py"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_replays_and_conserves(name: str) -> None:
    scenario: dict[str, Any] = SCENARIOS[name]
    world = World(balances=dict(scenario["initial"]), fee_bps=scenario["fee_bps"])
    total = sum(scenario["initial"].values())
    for step in scenario["steps"]:
        world, error = apply_step(world, step)
        assert error == step["expect"]["error"], step
        assert snapshot(world) == {k: v for k, v in step["expect"].items() if k != "error"}, step
        assert sum(world.balances.values()) == total  # tokens are only moved, never made
        esc = step["expect"]["escrow"]
        if esc and esc["status"] == "closed":
            assert esc["paid"] + esc["fee_paid"] + esc["refunded"] == esc["deposited"]


def final(name: str) -> dict[str, int]:
    balances: dict[str, int] = SCENARIOS[name]["steps"][-1]["expect"]["balances"]
    return balances


def test_hand_computed_full_run() -> None:
    # 60 minutes x 23,834 = 1,430,040 deposited; 5 % fee = 71,502.0 -> provider 1,358,538
    assert final("full-run-with-claims") == {"renter": 1_000_000_000 - 1_430_040, "provider": 1_358_538,
                                             "treasury": 71_502, "vault": 0}


def test_hand_computed_early_close() -> None:
    # 2 minutes (2m05s): 47,668 gross; fee floor(2,383.4) = 2,383; provider 45,285; refund 58 minutes
    assert final("early-close-by-renter") == {"renter": 1_000_000_000 - 47_668, "provider": 45_285,
                                              "treasury": 2_383, "vault": 0}


def test_hand_computed_fee_rounding_and_never_started() -> None:
    # rate 7, 5 minutes, 5 %: 35 gross, fee floor(1.75) = 1, provider 34
    assert final("fee-rounding-per-minute-claims") == {"renter": 1_000_000_000 - 35, "provider": 34,
                                                       "treasury": 1, "vault": 0}
    assert final("never-started") == {"renter": 1_000_000_000, "provider": 0, "treasury": 0, "vault": 0}
    # max fee 20 % on 4 minutes of 1,000,003: 4,000,012 gross, fee 800,002
    assert final("max-fee")["treasury"] == 800_002 and final("max-fee")["provider"] == 3_200_010
