"""The dgpu_escrow program's wire format, by hand: PDAs, instructions, accounts, error codes.

Pure (no RPC). Mirrors ``contracts/programs/dgpu_escrow/src`` exactly:

- PDAs: config ``[b"config"]``; escrow ``[b"escrow", renter, provider, rental_id u64 LE]``; the
  renter's rental-id record ``[b"renter", renter]``; the vault is the escrow's associated token
  account for the mint (classic SPL Token).
- Instruction data: Anchor's discriminator ``sha256("global:<snake_name>")[:8]`` then the borsh
  args (``OpenArgs {rental_id u64, rate_per_minute u64, max_minutes u32, start_deadline i64}``,
  ``TopUpArgs {extra_minutes u32}``, ``InitializeConfigArgs {fee_bps u16}``).
- Account metas in the order of each ``#[derive(Accounts)]`` struct (see ``ACCOUNTS``).
- Accounts: ``sha256("account:<Name>")[:8]`` then the borsh fields of ``state/*.rs``.
- Errors: Anchor numbers ``#[error_code]`` variants from 6000 in declaration order.

This is the fallback while the IDL (``contracts/idl/dgpu_escrow*.json``) is not committed;
``tests/contracts/test_solana_ix.py`` checks the encoding, and the same bytes go to
``tests/vectors/escrow_instructions.json`` for the program's own tests.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from spl.token.constants import ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID
from spl.token.instructions import get_associated_token_address

from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.escrow import Escrow, EscrowStatus

from .errors import EscrowRefused, LedgerError, ProgramError

__all__ = [
    "ACCOUNTS",
    "CLOCK_SYSVAR",
    "PROGRAM_ERRORS",
    "ConfigAccount",
    "EscrowAccount",
    "account_discriminator",
    "build",
    "config_pda",
    "decode_config",
    "decode_escrow",
    "decode_instruction",
    "encode_config",
    "encode_escrow",
    "error_from_code",
    "escrow_pda",
    "instruction_discriminator",
    "renter_pda",
    "vault_address",
]

SEED_CONFIG = b"config"
SEED_ESCROW = b"escrow"
SEED_RENTER = b"renter"
CLOCK_SYSVAR = Pubkey.from_string("SysvarC1ock11111111111111111111111111111111")

#: the program's error enum in declaration order; Anchor numbers them from 6000
PROGRAM_ERRORS = (
    "InvalidAmount", "Overflow", "InvalidDeadline", "Paused", "Unauthorized", "EscrowClosed",
    "AlreadyStarted", "StartDeadlinePassed", "NotStarted", "NothingToClaim", "Expired", "NotExpired",
    "StartDeadlineNotReached", "FeeTooHigh", "SameParty", "InvalidMint", "InvalidTreasury",
    "InvalidVault", "VaultBalanceMismatch", "DuplicateAccount", "RentalIdUsed",
)
ANCHOR_ERROR_OFFSET = 6000

#: (account name, is_signer, is_writable) per instruction, in the program's struct order
ACCOUNTS: dict[str, tuple[tuple[str, bool, bool], ...]] = {
    "initialize_config": (("admin", True, True), ("config", False, True), ("mint", False, False),
                          ("treasury", False, False), ("system_program", False, False)),
    "open": (("renter", True, True), ("provider", False, False), ("config", False, False),
             ("mint", False, False), ("escrow", False, True), ("renter_state", False, True),
             ("vault", False, True),
             ("renter_token", False, True), ("token_program", False, False),
             ("associated_token_program", False, False), ("system_program", False, False)),
    "start": (("provider", True, False), ("escrow", False, True)),
    "claim": (("provider", True, False), ("config", False, False), ("escrow", False, True),
              ("mint", False, False), ("vault", False, True), ("provider_token", False, True),
              ("treasury", False, True), ("token_program", False, False)),
    "top_up": (("renter", True, False), ("escrow", False, True), ("mint", False, False),
               ("vault", False, True), ("renter_token", False, True), ("token_program", False, False)),
    "close": (("caller", True, False), ("config", False, False), ("escrow", False, True),
              ("mint", False, False), ("vault", False, True), ("renter", False, True),
              ("renter_token", False, True), ("provider_token", False, True), ("treasury", False, True),
              ("token_program", False, False)),
    "settle_expired": (("config", False, False), ("escrow", False, True), ("mint", False, False),
                       ("vault", False, True), ("renter", False, True), ("renter_token", False, True),
                       ("provider_token", False, True), ("treasury", False, True),
                       ("token_program", False, False)),
    "refund_unstarted": (("renter", True, True), ("escrow", False, True), ("mint", False, False),
                         ("vault", False, True), ("renter_token", False, True),
                         ("token_program", False, False)),
}

#: borsh layout of each instruction's args: (field, struct code)
ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "initialize_config": (("fee_bps", "H"),),
    "open": (("rental_id", "Q"), ("rate_per_minute", "Q"), ("max_minutes", "I"), ("start_deadline", "q")),
    "top_up": (("extra_minutes", "I"),),
    "start": (), "claim": (), "close": (), "settle_expired": (), "refund_unstarted": (),
}
_FIXED = {"system_program": SYSTEM_PROGRAM_ID, "token_program": TOKEN_PROGRAM_ID,
          "associated_token_program": ASSOCIATED_TOKEN_PROGRAM_ID}


def instruction_discriminator(name: str) -> bytes:
    return hashlib.sha256(f"global:{name}".encode()).digest()[:8]


def account_discriminator(name: str) -> bytes:
    return hashlib.sha256(f"account:{name}".encode()).digest()[:8]


def config_pda(program_id: Pubkey) -> Pubkey:
    return Pubkey.find_program_address([SEED_CONFIG], program_id)[0]


def escrow_pda(program_id: Pubkey, renter: Pubkey, provider: Pubkey, rental_id: int) -> Pubkey:
    seeds = [SEED_ESCROW, bytes(renter), bytes(provider), rental_id.to_bytes(8, "little")]
    return Pubkey.find_program_address(seeds, program_id)[0]


def renter_pda(program_id: Pubkey, renter: Pubkey) -> Pubkey:
    return Pubkey.find_program_address([SEED_RENTER, bytes(renter)], program_id)[0]


def vault_address(escrow: Pubkey, mint: Pubkey) -> Pubkey:
    return get_associated_token_address(escrow, mint)


def build(
    program_id: Pubkey, name: str, accounts: dict[str, Pubkey], args: dict[str, int] | None = None
) -> Instruction:
    """One instruction: ``accounts`` names every non-program account of ``ACCOUNTS[name]``."""
    layout = ARGS[name]
    values = args or {}
    if set(values) != {field for field, _ in layout}:
        raise ValueError(f"{name} takes args {[f for f, _ in layout]}, got {sorted(values)}")
    data = instruction_discriminator(name) + b"".join(
        struct.pack("<" + code, values[field]) for field, code in layout
    )
    metas = []
    for account, signer, writable in ACCOUNTS[name]:
        key = _FIXED.get(account) or accounts.get(account)
        if key is None:
            raise ValueError(f"{name} needs account {account!r}")
        metas.append(AccountMeta(key, is_signer=signer, is_writable=writable))
    return Instruction(program_id, data, metas)


def decode_instruction(data: bytes) -> tuple[str, dict[str, int]]:
    """(instruction name, args) of instruction data built by :func:`build`."""
    for name, layout in ARGS.items():
        if data[:8] == instruction_discriminator(name):
            fmt = "<" + "".join(code for _, code in layout)
            if len(data) - 8 != struct.calcsize(fmt):
                raise ValueError(f"{name}: {len(data) - 8} arg bytes, expected {struct.calcsize(fmt)}")
            return name, dict(zip((f for f, _ in layout), struct.unpack(fmt, data[8:]), strict=True))
    raise ValueError("unknown instruction discriminator")


@dataclass(frozen=True, slots=True)
class EscrowAccount:
    """The program's ``Escrow`` account (``state/escrow.rs``): the escrow record
    (:class:`dgpu.protocol.escrow.Escrow`, keys as base58) plus the account's own bookkeeping."""

    version: int
    bump: int
    escrow: Escrow


@dataclass(frozen=True, slots=True)
class ConfigAccount:
    """The program's ``Config`` account (``state/config.rs``)."""

    version: int
    bump: int
    admin: Pubkey
    mint: Pubkey
    treasury: Pubkey
    fee_bps: int
    paused: bool


#: the program's status byte, in its enum's order
_STATUS = (EscrowStatus.OPEN, EscrowStatus.CLOSED)
#: 8 + InitSpace of Escrow (Option<i64> counts 9)
ESCROW_SPACE = 8 + 3 + 32 * 3 + 8 + 8 + 4 + 8 + 2 + 8 + 9 + 4 + 8 + 8 + 8
CONFIG_SPACE = 8 + 2 + 32 * 3 + 2 + 1


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ValueError("account data too short")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return value

    def key(self) -> Pubkey:
        if self.pos + 32 > len(self.data):
            raise ValueError("account data too short")
        self.pos += 32
        return Pubkey.from_bytes(self.data[self.pos - 32:self.pos])


def decode_escrow(data: bytes) -> EscrowAccount:
    if data[:8] != account_discriminator("Escrow"):
        raise ValueError("not an Escrow account")
    r = _Reader(bytes(data[8:]))
    version, bump, status = r.take("B"), r.take("B"), r.take("B")
    if status >= len(_STATUS):
        raise ValueError(f"unknown escrow status byte {status}")
    renter, provider, mint = r.key(), r.key(), r.key()
    rental_id, rate, max_minutes, deposited = r.take("Q"), r.take("Q"), r.take("I"), r.take("Q")
    fee_bps, start_deadline = r.take("H"), r.take("q")
    tag = r.take("B")
    if tag not in (0, 1):
        raise ValueError(f"bad Option tag {tag}")
    started_at = r.take("q") if tag == 1 else None
    claimed, paid, fee_paid, refunded = r.take("I"), r.take("Q"), r.take("Q"), r.take("Q")
    return EscrowAccount(version, bump, Escrow(
        renter=str(renter), provider=str(provider), mint=str(mint), rental_id=rental_id, rate_per_minute=rate,
        max_minutes=max_minutes, deposited=deposited, fee_bps=fee_bps, start_deadline=start_deadline,
        started_at=started_at, claimed_minutes=claimed, paid=paid, fee_paid=fee_paid, refunded=refunded,
        status=_STATUS[status]))


def encode_escrow(a: EscrowAccount) -> bytes:
    """Inverse of :func:`decode_escrow`, padded to the account's allocated size (tests, fixtures)."""
    e = a.escrow
    out = account_discriminator("Escrow") + struct.pack("<BBB", a.version, a.bump, _STATUS.index(e.status))
    out += b"".join(bytes(Pubkey.from_string(k)) for k in (e.renter, e.provider, e.mint))
    out += struct.pack("<QQIQHq", e.rental_id, e.rate_per_minute, e.max_minutes, e.deposited, e.fee_bps,
                       e.start_deadline)
    out += b"\0" if e.started_at is None else b"\1" + struct.pack("<q", e.started_at)
    out += struct.pack("<IQQQ", e.claimed_minutes, e.paid, e.fee_paid, e.refunded)
    return out.ljust(ESCROW_SPACE, b"\0")


def decode_config(data: bytes) -> ConfigAccount:
    if data[:8] != account_discriminator("Config"):
        raise ValueError("not a Config account")
    r = _Reader(bytes(data[8:]))
    version, bump = r.take("B"), r.take("B")
    admin, mint, treasury = r.key(), r.key(), r.key()
    fee_bps, paused = r.take("H"), r.take("B")
    return ConfigAccount(version, bump, admin, mint, treasury, fee_bps, bool(paused))


def encode_config(c: ConfigAccount) -> bytes:
    return (account_discriminator("Config") + struct.pack("<BB", c.version, c.bump) + bytes(c.admin)
            + bytes(c.mint) + bytes(c.treasury) + struct.pack("<HB", c.fee_bps, int(c.paused)))


def error_from_code(code: int) -> LedgerError:
    """The ledger error for the program's custom error ``code`` (6000 + variant index)."""
    index = code - ANCHOR_ERROR_OFFSET
    if 0 <= index < len(PROGRAM_ERRORS):
        name = PROGRAM_ERRORS[index]
        try:
            return EscrowRefused(EscrowErrorCode(name))
        except ValueError:
            return ProgramError(name)
    return ProgramError(f"Custom({code})", "not one of the escrow program's errors")
