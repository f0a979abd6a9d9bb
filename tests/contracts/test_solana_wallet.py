"""The wallet on Solana (``dgpu wallet --solana-rpc``), against an in-process LiteSVM chain."""

from __future__ import annotations

from solders.pubkey import Pubkey
from spl.token.instructions import get_associated_token_address

from dgpu.client.wallet import solana_wallet_report
from dgpu.contracts.solana_escrow import SolanaEscrow

from .litesvm_rpc import LiteSvmRpc
from .solana_fixtures import PROGRAM_ID, make_chain


async def test_wallet_reports_sol_and_dgpu_and_creates_the_token_account_only_when_asked() -> None:
    chain = make_chain(decimals=6)
    rpc = LiteSvmRpc(chain.svm)
    escrow = SolanaEscrow(rpc.client(), PROGRAM_ID, chain.provider, poll_interval_s=0.01)
    ata = get_associated_token_address(chain.provider.pubkey(), chain.mint)

    before = await solana_wallet_report(escrow)
    assert before["address"] == str(chain.provider.pubkey()) and before["real_value"] is True
    assert before["sol_lamports"] == 10**10 and before["sol"] == "10"
    assert (before["mint"], before["decimals"], before["balance"]) == (str(chain.mint), 6, 0)
    assert before["token_account"] is None and chain.svm.get_account(ata) is None  # nothing created

    created = await solana_wallet_report(escrow, create_token_account=True)
    assert created["token_account"] == str(ata) and chain.svm.get_account(ata) is not None
    assert created["sol_lamports"] < before["sol_lamports"]  # the wallet paid the rent and fee

    chain.mint_to(chain.provider.pubkey(), 2_500_000)
    again = await solana_wallet_report(escrow, create_token_account=True)  # idempotent
    assert again["balance"] == 2_500_000 and again["dgpu"] == "2.5"
    assert Pubkey.from_string(again["token_account"]) == ata
