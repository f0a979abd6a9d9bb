"""A LiteSVM chain with the SPL side of the escrow set up: mint, token accounts, Config (tests only)."""

from __future__ import annotations

from dataclasses import dataclass

import spl.token.instructions as ti
from solders.account import Account
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.token.state import TokenAccount
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata
from spl.token.constants import TOKEN_PROGRAM_ID

from dgpu.contracts import solana_ix as ix

PROGRAM_ID = Pubkey.from_string("FwS7dLgPfT2jNmtFXVhesDHXLJhpa1gPLYfxZe5Guu4P")


def keypair(tag: str) -> Keypair:
    return Keypair.from_seed(tag.encode().ljust(32, b"\0")[:32])


@dataclass
class Chain:
    svm: LiteSVM
    payer: Keypair
    renter: Keypair
    provider: Keypair
    treasury_owner: Keypair
    mint: Pubkey
    treasury: Pubkey

    def send(self, ixs: list[Instruction], *signers: Keypair) -> None:
        bh = self.svm.latest_blockhash()
        tx = Transaction(list(signers), Message.new_with_blockhash(ixs, signers[0].pubkey(), bh), bh)
        result = self.svm.send_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            raise RuntimeError(f"{result.err()} {result.meta().logs()}")

    def balance(self, token_account: Pubkey) -> int:
        account = self.svm.get_account(token_account)
        return 0 if account is None else TokenAccount.from_bytes(bytes(account.data)).amount

    def mint_to(self, owner: Pubkey, amount: int) -> Pubkey:
        ata = ti.get_associated_token_address(owner, self.mint)
        self.send([ti.create_idempotent_associated_token_account(self.payer.pubkey(), owner, self.mint),
                   ti.mint_to(ti.MintToParams(program_id=TOKEN_PROGRAM_ID, mint=self.mint, dest=ata,
                                              mint_authority=self.payer.pubkey(), amount=amount))], self.payer)
        return ata

    def set_clock(self, unix_timestamp: int) -> None:
        clock = self.svm.get_clock()
        clock.unix_timestamp = unix_timestamp
        clock.slot += 1
        self.svm.set_clock(clock)

    def put_program_account(self, address: Pubkey, data: bytes) -> None:
        lamports = self.svm.minimum_balance_for_rent_exemption(len(data))
        self.svm.set_account(address, Account(lamports, data, PROGRAM_ID, False, 0))


def make_chain(decimals: int = 6, fee_bps: int = 500) -> Chain:
    svm = LiteSVM()
    payer, renter, provider, treasury_owner = (keypair(t) for t in ("payer", "renter", "provider", "treasury"))
    mint_kp = keypair(f"mint-{decimals}")
    for k in (payer, renter, provider):
        svm.airdrop(k.pubkey(), 10**10)
    chain = Chain(svm, payer, renter, provider, treasury_owner, mint_kp.pubkey(), Pubkey.default())
    chain.send([create_account(CreateAccountParams(
        from_pubkey=payer.pubkey(), to_pubkey=mint_kp.pubkey(), lamports=svm.minimum_balance_for_rent_exemption(82),
        space=82, owner=TOKEN_PROGRAM_ID)),
        ti.initialize_mint(ti.InitializeMintParams(decimals=decimals, mint=mint_kp.pubkey(),
                                                   mint_authority=payer.pubkey(), freeze_authority=None,
                                                   program_id=TOKEN_PROGRAM_ID))], payer, mint_kp)
    chain.treasury = chain.mint_to(treasury_owner.pubkey(), 0)
    config = ix.ConfigAccount(version=1, bump=Pubkey.find_program_address([b"config"], PROGRAM_ID)[1],
                              admin=payer.pubkey(), mint=chain.mint, treasury=chain.treasury, fee_bps=fee_bps,
                              paused=False)
    chain.put_program_account(ix.config_pda(PROGRAM_ID), ix.encode_config(config))
    chain.set_clock(1_700_000_000)
    return chain
