"""Audit every escrow of the program on a cluster, from chain accounts alone.

An escrow account that exists must hold in its vault exactly what was deposited and not yet
paid, charged as fee or refunded (paid + fee + refunded + vault == deposited; a closed one:
vault empty and paid + fee + refunded == deposited). A settled escrow's account and vault are
closed (rent back to the renter), so the escrows the caller knows were settled are checked to
be gone, or their vault empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment, Confirmed
from solders.pubkey import Pubkey
from solders.token.state import TokenAccount

from dgpu.protocol.escrow import EscrowStatus

from . import solana_ix as ix

__all__ = ["EscrowAudit", "audit_escrows"]


@dataclass
class EscrowAudit:
    """What the audit saw: escrow accounts live (open or closed-but-kept), settled ones gone."""

    live: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    deposited: int = 0
    paid: int = 0
    fees: int = 0
    refunded: int = 0
    in_vaults: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def conserved(self) -> bool:
        return not self.problems


async def _token_amount(client: AsyncClient, account: Pubkey, commitment: Commitment) -> int | None:
    resp = await client.get_account_info(account, commitment=commitment)
    return None if resp.value is None else TokenAccount.from_bytes(bytes(resp.value.data)).amount


async def audit_escrows(client: AsyncClient, program_id: Pubkey, *, settled: Iterable[str] = (),
                        commitment: Commitment = Confirmed) -> EscrowAudit:
    """Every escrow account of ``program_id`` (getProgramAccounts, by the escrow's size) checked
    for conservation; each address in ``settled`` checked to be closed with an empty vault."""
    audit = EscrowAudit()
    resp = await client.get_program_accounts(program_id, commitment=commitment, encoding="base64",
                                             filters=[ix.ESCROW_SPACE])
    for keyed in resp.value:
        address = str(keyed.pubkey)
        record = ix.decode_escrow(bytes(keyed.account.data)).escrow
        vault = await _token_amount(client, ix.vault_address(keyed.pubkey, Pubkey.from_string(record.mint)),
                                    commitment) or 0
        audit.live.append(address)
        audit.deposited += record.deposited
        audit.paid += record.paid
        audit.fees += record.fee_paid
        audit.refunded += record.refunded
        audit.in_vaults += vault
        out = record.paid + record.fee_paid + record.refunded
        if out + vault != record.deposited:
            audit.problems.append(f"{address}: paid+fee+refunded {out} + vault {vault} != deposited "
                                  f"{record.deposited}")
        if record.status is EscrowStatus.CLOSED and vault:
            audit.problems.append(f"{address}: closed with {vault} left in its vault")
    config = (await client.get_account_info(ix.config_pda(program_id), commitment=commitment)).value
    mint = ix.decode_config(bytes(config.data)).mint if config is not None else None
    for address in settled:
        if address in audit.live:
            continue  # kept and already checked above
        key = Pubkey.from_string(address)
        if (await client.get_account_info(key, commitment=commitment)).value is not None:
            audit.problems.append(f"{address}: settled but not an escrow account of the program")
            continue
        left = await _token_amount(client, ix.vault_address(key, mint), commitment) if mint is not None else None
        if left:
            audit.problems.append(f"{address}: closed, but {left} left in its vault")
        audit.gone.append(address)
    return audit
