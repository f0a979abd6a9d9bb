"""The committed IDLs of the dgpu_escrow program (contracts/idl/).

``dgpu_escrow.json`` is generated from the program (contracts/scripts/gen_idl.sh; the Rust test
``idl::committed_idl_matches_the_program`` fails when it is stale). ``dgpu_escrow.legacy.json`` is
its conversion for anchorpy 0.21 (contracts/scripts/idl_to_legacy.py); here: it is the conversion
of the committed IDL, anchorpy 0.21 loads it, and it encodes and decodes what the program expects.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from anchorpy import Idl  # type: ignore[attr-defined]
from anchorpy.coder.accounts import AccountsCoder
from anchorpy.coder.instruction import InstructionCoder
from anchorpy.program.common import NamedInstruction
from solders.pubkey import Pubkey

from dgpu.contracts import solana_ix
from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.escrow import Escrow, EscrowStatus

ROOT = Path(__file__).resolve().parents[2]
IDL_DIR = ROOT / "contracts" / "idl"
IDL: dict[str, Any] = json.loads((IDL_DIR / "dgpu_escrow.json").read_text())
LEGACY_TEXT = (IDL_DIR / "dgpu_escrow.legacy.json").read_text()

#: the error names of docs/escrow-rules.md, in the order the program declares them (codes 6000...)
RULES_ERRORS = (
    "InvalidAmount", "Overflow", "InvalidDeadline", "Paused", "Unauthorized", "EscrowClosed",
    "AlreadyStarted", "StartDeadlinePassed", "NotStarted", "NothingToClaim", "Expired", "NotExpired",
    "StartDeadlineNotReached",
)


def _converter() -> ModuleType:
    path = ROOT / "contracts" / "scripts" / "idl_to_legacy.py"
    spec = importlib.util.spec_from_file_location("idl_to_legacy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_legacy_idl_is_the_conversion_of_the_committed_idl() -> None:
    converted = _converter().convert(IDL)
    assert json.loads(LEGACY_TEXT) == converted, "run contracts/scripts/gen_idl.sh"
    assert json.dumps(converted, indent=2) + "\n" == LEGACY_TEXT


def test_anchorpy_loads_the_legacy_idl() -> None:
    idl = Idl.from_json(LEGACY_TEXT)
    assert idl.name == "dgpu_escrow"
    assert {i.name for i in idl.instructions} == {
        "initializeConfig", "updateConfig", "setTreasury", "open", "start", "claim", "topUp", "close",
        "settleExpired", "refundUnstarted",
    }
    assert [a.name for a in idl.accounts] == ["Config", "Escrow", "Renter"]
    assert idl.errors is not None
    assert [(e.code, e.name) for e in idl.errors][: len(RULES_ERRORS)] == [
        (6000 + i, name) for i, name in enumerate(RULES_ERRORS)
    ]


def test_idl_names_the_program_and_the_rules() -> None:
    assert IDL["address"] == "FwS7dLgPfT2jNmtFXVhesDHXLJhpa1gPLYfxZe5Guu4P"
    assert IDL["metadata"]["spec"] == "0.1.0"
    names = [e["name"] for e in IDL["errors"]]
    assert tuple(names[: len(RULES_ERRORS)]) == RULES_ERRORS
    assert {code.value for code in EscrowErrorCode} <= set(names)
    constants = {c["name"]: c["value"] for c in IDL["constants"]}
    assert constants["MAX_FEE_BPS"] == "2000"
    assert bytes(json.loads(constants["SEED_ESCROW"])) == b"escrow"
    assert bytes(json.loads(constants["SEED_CONFIG"])) == b"config"


def test_discriminators_are_anchors_defaults() -> None:
    for namespace, items in (("global", IDL["instructions"]), ("account", IDL["accounts"]),
                             ("event", IDL["events"])):
        for item in items:
            want = hashlib.sha256(f"{namespace}:{item['name']}".encode()).digest()[:8]
            assert bytes(item["discriminator"]) == want, item["name"]


def test_anchorpy_encodes_what_the_program_decodes() -> None:
    coder = InstructionCoder(Idl.from_json(LEGACY_TEXT))
    args = {"rental_id": 7, "rate_per_minute": 23_834, "max_minutes": 60, "start_deadline": 1_700_000_300}
    data = coder.build(NamedInstruction(name="open", data={"args": args}))
    # Anchor: discriminator, then the borsh OpenArgs (u64, u64, u32, i64)
    want = hashlib.sha256(b"global:open").digest()[:8] + (
        (7).to_bytes(8, "little") + (23_834).to_bytes(8, "little") + (60).to_bytes(4, "little")
        + (1_700_000_300).to_bytes(8, "little", signed=True)
    )
    assert data == want
    assert coder.build(NamedInstruction(name="top_up", data={"args": {"extra_minutes": 5}})) == (
        hashlib.sha256(b"global:top_up").digest()[:8] + (5).to_bytes(4, "little")
    )
    settle = coder.build(NamedInstruction(name="settle_expired", data={}))
    assert settle == hashlib.sha256(b"global:settle_expired").digest()[:8]


def test_anchorpy_decodes_an_escrow_account() -> None:
    coder = AccountsCoder(Idl.from_json(LEGACY_TEXT))
    keys = [Pubkey.new_unique() for _ in range(3)]
    account = solana_ix.EscrowAccount(1, 254, Escrow(
        renter=str(keys[0]), provider=str(keys[1]), mint=str(keys[2]), rental_id=7, rate_per_minute=23_834,
        max_minutes=60, deposited=1_430_040, fee_bps=500, start_deadline=1_700_000_300, started_at=1_700_000_060,
        claimed_minutes=60, paid=1_358_538, fee_paid=71_502, refunded=0, status=EscrowStatus.CLOSED))
    decoded = coder.decode(solana_ix.encode_escrow(account))
    assert decoded.renter == keys[0] and decoded.mint == keys[2]
    assert (decoded.rate_per_minute, decoded.max_minutes, decoded.deposited) == (23_834, 60, 1_430_040)
    assert (decoded.started_at, decoded.claimed_minutes, decoded.fee_paid) == (1_700_000_060, 60, 71_502)
    assert type(decoded.status).__name__ == "Closed"


def test_idl_accounts_match_the_hand_written_client() -> None:
    """contracts/solana_ix.py lists each instruction's accounts by hand; the IDL is the program's."""
    for ix in IDL["instructions"]:
        if ix["name"] not in solana_ix.ACCOUNTS:
            continue
        from_idl = tuple((a["name"], bool(a.get("signer")), bool(a.get("writable"))) for a in ix["accounts"])
        assert from_idl == solana_ix.ACCOUNTS[ix["name"]], ix["name"]
    assert tuple(e["name"] for e in IDL["errors"]) == solana_ix.PROGRAM_ERRORS
