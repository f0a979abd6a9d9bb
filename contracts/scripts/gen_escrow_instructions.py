"""Writes ``tests/vectors/escrow_instructions.json``: the exact instructions SolanaEscrow sends.

For every scenario of ``tests/vectors/escrow.json`` and every step, ``SolanaEscrow.instructions``
(the code path its ``open``/``claim``/... methods send) is asked for the instructions the step's
actor would send; they are written with fixed keys derived from fixed seeds, so the Rust tests
can execute them against the program and compare balances with the scenario's ``expect``.

Run: ``.venv/bin/python contracts/scripts/gen_escrow_instructions.py`` (``--check`` exits 1 if
the file differs from what the code builds now). The format is described in the file's
``format`` key.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from solana.rpc.async_api import AsyncClient
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from spl.token.instructions import get_associated_token_address

from dgpu.contracts import solana_ix as ix
from dgpu.contracts.escrow_api import EscrowHandle
from dgpu.contracts.solana_escrow import SolanaEscrow

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "vectors" / "escrow.json"
OUT = ROOT / "tests" / "vectors" / "escrow_instructions.json"
PROGRAM_ID = Pubkey.from_string("FwS7dLgPfT2jNmtFXVhesDHXLJhpa1gPLYfxZe5Guu4P")
ROLES = ("renter", "provider", "stranger", "admin", "mint", "treasury_owner")

FORMAT = (
    "dgpu escrow instruction vectors, version 1. Written by contracts/scripts/gen_escrow_instructions.py "
    "from tests/vectors/escrow.json; do not edit. "
    "`keys`: every keypair is the Ed25519 key whose 32-byte secret seed (solders Keypair.from_seed, Rust "
    "keypair_from_seed) is sha256('dgpu/escrow-instructions/' + role) (hex in `seed_hex`), except `admin`, "
    "the program's "
    "build-time ADMIN (the public development admin, seed b'dgpu-escrow-dev-admin-NOT-SECRET'); `pubkey` is its "
    "base58 address. The mint is the `mint` key's account: a classic "
    "SPL Token mint with `decimals`, mint authority `admin`. `accounts`: config PDA [b'config']; `treasury` = "
    "ATA(treasury_owner, mint), to exist before the scenario; token accounts are ATAs (classic SPL Token program). "
    "Per scenario: fund renter/provider/stranger/admin with SOL; create the mint; create the treasury ATA and the "
    "renter ATA; mint `initial.renter` base units to the renter ATA (`initial.provider` to the provider ATA if "
    "non-zero; a non-zero `initial.vault` is already at the scenario's `vault` ATA, created ahead by someone "
    "else); run `setup` (initialize_config signed by admin with the scenario's fee_bps). Then for each step: "
    "set the Clock's unix_timestamp to `at`, send one transaction with `instructions` in order, fee payer and only "
    "signer `signer` (the key named by `by`), and check `expect_error` (null, or the program error name: "
    "Anchor code 6000 + its index in the EscrowError enum) and the scenario's `expect` balances in escrow.json "
    "(`vault` = the `vault` ATA's balance, 0 once closed). A failing step changes nothing. "
    "Instruction: `program_id` base58, `data_hex`, `accounts` as ordered metas {pubkey, is_signer, is_writable, name}; "
    "`name` is informational (the Accounts struct field, or the ATA program's account for create_idempotent). "
    "Steps of `claim`, `close` and `settle_expired` start with create_idempotent_associated_token_account "
    "instructions for the payees (paid by the signer), exactly as SolanaEscrow sends them."
)
_ATA_NAMES = ("payer", "associated_token", "owner", "mint", "system_program", "token_program")


#: the program's build-time ADMIN (constants::DEV_ADMIN): only it may run initialize_config
DEV_ADMIN_SEED = b"dgpu-escrow-dev-admin-NOT-SECRET"


def seed(role: str) -> bytes:
    if role == "admin":
        return DEV_ADMIN_SEED
    return hashlib.sha256(f"dgpu/escrow-instructions/{role}".encode()).digest()


def key(role: str) -> Keypair:
    return Keypair.from_seed(seed(role))


def _instruction(instruction: Instruction, action: str) -> dict[str, Any]:
    if instruction.program_id == PROGRAM_ID:
        names = [name for name, _, _ in ix.ACCOUNTS[action]]
    else:
        names = list(_ATA_NAMES)
    return {
        "program_id": str(instruction.program_id),
        "data_hex": bytes(instruction.data).hex(),
        "accounts": [
            {"pubkey": str(m.pubkey), "is_signer": m.is_signer, "is_writable": m.is_writable, "name": name}
            for m, name in zip(instruction.accounts, names, strict=True)
        ],
    }


def generate() -> dict[str, Any]:
    source = json.loads(SOURCE.read_text())
    keys = {role: key(role) for role in ROLES}
    mint = keys["mint"].pubkey()
    treasury = get_associated_token_address(keys["treasury_owner"].pubkey(), mint)
    renter, provider = keys["renter"].pubkey(), keys["provider"].pubkey()
    # Built offline: the client is never awaited.
    rpc = AsyncClient("http://127.0.0.1:1")
    clients = {role: SolanaEscrow(rpc, PROGRAM_ID, keys[role]) for role in ("renter", "provider", "stranger")}
    scenarios = []
    for scenario in source["scenarios"]:
        config = ix.ConfigAccount(version=1, bump=0, admin=keys["admin"].pubkey(), mint=mint, treasury=treasury,
                                  fee_bps=scenario["fee_bps"], paused=False)
        setup = ix.build(PROGRAM_ID, "initialize_config",
                         {"admin": keys["admin"].pubkey(), "config": ix.config_pda(PROGRAM_ID), "mint": mint,
                          "treasury": treasury}, {"fee_bps": scenario["fee_bps"]})
        steps = []
        escrow: Pubkey | None = None
        for index, step in enumerate(scenario["steps"]):
            action, args = step["action"], dict(step.get("args") or {})
            if action == "open":
                escrow = ix.escrow_pda(PROGRAM_ID, renter, provider, args["rental_id"])
                rental_id = args["rental_id"]
            if escrow is None:
                raise ValueError(f"{scenario['name']}: a step before the first open")
            handle = EscrowHandle("solana", str(escrow), str(renter), str(provider), rental_id)
            instructions = clients[step["by"]].instructions(action, handle, config, args=args or None)
            steps.append({
                "index": index, "at": step["at"], "by": step["by"], "signer": str(keys[step["by"]].pubkey()),
                "action": action, "instructions": [_instruction(i, action) for i in instructions],
                "expect_error": step["expect"]["error"],
            })
        assert escrow is not None
        scenarios.append({
            "name": scenario["name"], "fee_bps": scenario["fee_bps"], "initial": scenario["initial"],
            "escrow": str(escrow), "vault": str(ix.vault_address(escrow, mint)),
            "setup": [_instruction(setup, "initialize_config")], "steps": steps,
        })
    return {
        "format": FORMAT,
        "version": 1,
        "source": "tests/vectors/escrow.json",
        "program_id": str(PROGRAM_ID),
        "keys": {role: {"seed_hex": seed(role).hex(), "pubkey": str(k.pubkey())} for role, k in keys.items()},
        "mint": {"address": str(mint), "decimals": source["decimals"], "mint_authority": str(keys["admin"].pubkey())},
        "accounts": {
            "config": str(ix.config_pda(PROGRAM_ID)), "treasury": str(treasury),
            "renter_token": str(get_associated_token_address(renter, mint)),
            "provider_token": str(get_associated_token_address(provider, mint)),
        },
        "scenarios": scenarios,
    }


def render() -> str:
    return json.dumps(generate(), indent=1) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
