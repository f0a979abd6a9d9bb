"""The hand-written borsh codec: what SolanaEscrow builds decodes to the right fields and accounts."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from solana.rpc.async_api import AsyncClient
from solders.pubkey import Pubkey
from spl.token.constants import ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID
from spl.token.instructions import get_associated_token_address

from dgpu.contracts import solana_ix as ix
from dgpu.contracts.errors import EscrowRefused, ProgramError
from dgpu.contracts.escrow_api import EscrowHandle
from dgpu.contracts.solana_escrow import SolanaEscrow
from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.escrow import Escrow, EscrowStatus

from .solana_fixtures import PROGRAM_ID, keypair

ROOT = Path(__file__).resolve().parents[2]
RENTER, PROVIDER, STRANGER = keypair("renter"), keypair("provider"), keypair("stranger")
MINT, TREASURY = Pubkey.new_unique(), Pubkey.new_unique()
CONFIG = ix.ConfigAccount(1, 255, Pubkey.new_unique(), MINT, TREASURY, 500, False)
ESCROW = ix.escrow_pda(PROGRAM_ID, RENTER.pubkey(), PROVIDER.pubkey(), 2**64 - 1)
HANDLE = EscrowHandle("solana", str(ESCROW), str(RENTER.pubkey()), str(PROVIDER.pubkey()), 2**64 - 1)


def _client(who: Any) -> SolanaEscrow:
    return SolanaEscrow(AsyncClient("http://127.0.0.1:1"), PROGRAM_ID, who)


def test_discriminators_are_anchors() -> None:
    assert ix.instruction_discriminator("claim").hex() == "3ec6d6c1d59f6cd2"  # SOLANA-NOTES §2
    for name in ix.ARGS:
        assert ix.instruction_discriminator(name) == hashlib.sha256(f"global:{name}".encode()).digest()[:8]
    assert len({ix.instruction_discriminator(n) for n in ix.ARGS}) == len(ix.ARGS)


def test_open_encodes_args_and_accounts() -> None:
    args = {"rental_id": 2**64 - 1, "rate_per_minute": 23_834, "max_minutes": 2**32 - 1, "start_deadline": -5}
    (instruction,) = _client(RENTER).instructions("open", HANDLE, CONFIG, args=args)
    assert instruction.program_id == PROGRAM_ID
    assert ix.decode_instruction(bytes(instruction.data)) == ("open", args)
    assert len(bytes(instruction.data)) == 8 + 8 + 8 + 4 + 8
    metas = [(m.pubkey, m.is_signer, m.is_writable) for m in instruction.accounts]
    assert metas == [
        (RENTER.pubkey(), True, True), (PROVIDER.pubkey(), False, False), (ix.config_pda(PROGRAM_ID), False, False),
        (MINT, False, False), (ESCROW, False, True),
        (Pubkey.find_program_address([b"renter", bytes(RENTER.pubkey())], PROGRAM_ID)[0], False, True),
        (get_associated_token_address(ESCROW, MINT), False, True),
        (get_associated_token_address(RENTER.pubkey(), MINT), False, True), (TOKEN_PROGRAM_ID, False, False),
        (ASSOCIATED_TOKEN_PROGRAM_ID, False, False), (Pubkey.from_string("11111111111111111111111111111111"),
                                                       False, False),
    ]


def test_close_by_provider_pays_to_the_escrow_parties() -> None:
    instructions = _client(PROVIDER).instructions("close", HANDLE, CONFIG)
    assert [i.program_id for i in instructions] == [ASSOCIATED_TOKEN_PROGRAM_ID] * 2 + [PROGRAM_ID]
    close = instructions[-1]
    assert ix.decode_instruction(bytes(close.data)) == ("close", {})
    named = {name: m for (name, _, _), m in zip(ix.ACCOUNTS["close"], close.accounts, strict=True)}
    assert named["caller"].pubkey == PROVIDER.pubkey() and named["caller"].is_signer
    assert named["renter"].pubkey == RENTER.pubkey() and not named["renter"].is_signer
    assert named["provider_token"].pubkey == get_associated_token_address(PROVIDER.pubkey(), MINT)
    assert named["treasury"].pubkey == TREASURY and named["treasury"].is_writable
    assert sum(m.is_signer for m in close.accounts) == 1


@pytest.mark.parametrize("action", ["start", "claim", "top_up", "refund_unstarted"])
def test_the_signer_slot_is_always_the_sender(action: str) -> None:
    args = {"extra_minutes": 3} if action == "top_up" else None
    last = _client(STRANGER).instructions(action, HANDLE, CONFIG, args=args)[-1]  # type: ignore[arg-type]
    signers = [m.pubkey for m in last.accounts if m.is_signer]
    assert signers == [STRANGER.pubkey()]
    assert ix.decode_instruction(bytes(last.data)) == (action, args or {})


def test_settle_expired_needs_no_signature() -> None:
    last = _client(STRANGER).instructions("settle_expired", HANDLE, CONFIG)[-1]
    assert not any(m.is_signer for m in last.accounts)


def test_account_codec_round_trips() -> None:
    for started in (None, 1_700_000_060):
        a = ix.EscrowAccount(1, 253, Escrow(
            renter=str(RENTER.pubkey()), provider=str(PROVIDER.pubkey()), mint=str(MINT), rental_id=2**64 - 1,
            rate_per_minute=2**63, max_minutes=2**32 - 1, deposited=2**64 - 1, fee_bps=2000, start_deadline=-1,
            started_at=started, claimed_minutes=7, paid=1, fee_paid=2, refunded=3, status=EscrowStatus.CLOSED))
        data = ix.encode_escrow(a)
        assert len(data) == ix.ESCROW_SPACE == 182
        assert ix.decode_escrow(data) == a
    with pytest.raises(ValueError):
        ix.decode_escrow(b"\0" * 182)
    c = ix.ConfigAccount(1, 250, RENTER.pubkey(), MINT, TREASURY, 2000, True)
    assert ix.decode_config(ix.encode_config(c)) == c


def test_error_codes() -> None:
    refused = ix.error_from_code(6009)
    assert isinstance(refused, EscrowRefused) and refused.code is EscrowErrorCode.NOTHING_TO_CLAIM
    assert isinstance(ix.error_from_code(6004), EscrowRefused)
    assert ix.error_from_code(6004).code is EscrowErrorCode.UNAUTHORIZED  # type: ignore[attr-defined]
    wrong_vault = ix.error_from_code(6017)
    assert isinstance(wrong_vault, ProgramError) and wrong_vault.name == "InvalidVault"
    assert isinstance(ix.error_from_code(3012), ProgramError)


def test_error_enum_matches_the_rust_source() -> None:
    source = ROOT / "contracts" / "programs" / "dgpu_escrow" / "src" / "errors.rs"
    if not source.exists():
        pytest.skip("the program's source is not in this checkout")
    body = source.read_text().split("pub enum EscrowError", 1)[1]
    names = [line.strip().rstrip(",") for line in body.splitlines()
             if line.strip().rstrip(",").isidentifier() and line.strip().endswith(",")]
    assert tuple(names) == ix.PROGRAM_ERRORS


def test_instruction_vectors_are_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_escrow_instructions", ROOT / "contracts" / "scripts" / "gen_escrow_instructions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "tests" / "vectors" / "escrow_instructions.json").read_text()
    assert module.render() == committed
    data = json.loads(committed)
    assert "format" in data and data["program_id"] == str(PROGRAM_ID)
    for scenario in data["scenarios"]:
        for step in scenario["steps"]:
            last = step["instructions"][-1]
            name, _ = ix.decode_instruction(bytes.fromhex(last["data_hex"]))
            assert name == step["action"]
            assert [a["pubkey"] for a in last["accounts"] if a["is_signer"]] in ([step["signer"]], [])


def test_legacy_idl_agrees_when_present() -> None:
    path = ROOT / "contracts" / "idl" / "dgpu_escrow.legacy.json"
    if not path.exists():
        pytest.skip("contracts/idl/dgpu_escrow.legacy.json is not committed yet")
    from anchorpy import Idl  # type: ignore[attr-defined]
    from anchorpy.coder.instruction import InstructionCoder

    coder = InstructionCoder(Idl.from_json(path.read_text()))
    args = {"rental_id": 7, "rate_per_minute": 23_834, "max_minutes": 60, "start_deadline": 1_700_000_300}
    (instruction,) = _client(RENTER).instructions("open", HANDLE, CONFIG, args=args)
    parsed = coder.parse(bytes(instruction.data))
    assert parsed.name == "open"
