"""SolanaEscrow against LiteSVM: the SPL side, PDAs, account decoding, sending and confirming.

The escrow program itself cannot run here (no SBF build), so these tests cover everything around
it: mint decimals read from the chain, token balances, the Clock, decoding an Escrow account,
the send + trio confirmation loop, and the conversion of RPC and program errors.
"""

from __future__ import annotations

import pytest
import spl.token.instructions as ti
from solders.pubkey import Pubkey

from dgpu.contracts import solana_ix as ix
from dgpu.contracts.errors import ConfirmationTimeout, EscrowNotFound, EscrowRefused, LedgerError
from dgpu.contracts.escrow_api import EscrowHandle
from dgpu.contracts.solana_escrow import SolanaEscrow
from dgpu.protocol.errors import EscrowErrorCode
from dgpu.protocol.escrow import Escrow, EscrowStatus

from .litesvm_rpc import LiteSvmRpc, _RpcError
from .solana_fixtures import PROGRAM_ID, Chain, make_chain

T0 = 1_700_000_000


def _escrow_for(chain: Chain, rpc: LiteSvmRpc, *, timeout_s: float = 10.0) -> SolanaEscrow:
    return SolanaEscrow(rpc.client(), PROGRAM_ID, chain.renter, confirm_timeout_s=timeout_s, poll_interval_s=0.01)


@pytest.mark.parametrize("decimals", [6, 9])
async def test_mint_decimals_are_read_from_the_chain(decimals: int) -> None:
    chain = make_chain(decimals=decimals)
    escrow = _escrow_for(chain, LiteSvmRpc(chain.svm))
    info = await escrow.mint_info()
    assert (info.address, info.decimals) == (str(chain.mint), decimals)


async def test_balances_and_clock() -> None:
    chain = make_chain()
    chain.mint_to(chain.renter.pubkey(), 1_000_000_000)
    escrow = _escrow_for(chain, LiteSvmRpc(chain.svm))
    assert await escrow.balance(str(chain.renter.pubkey())) == 1_000_000_000
    assert await escrow.balance(str(chain.provider.pubkey())) == 0  # no token account yet
    chain.set_clock(T0 + 600)
    assert await escrow.now() == T0 + 600


def test_pdas_match_the_program_seeds() -> None:
    renter, provider = Pubkey.new_unique(), Pubkey.new_unique()
    mint = Pubkey.new_unique()
    expected, _ = Pubkey.find_program_address(
        [b"escrow", bytes(renter), bytes(provider), (7).to_bytes(8, "little")], PROGRAM_ID)
    assert ix.escrow_pda(PROGRAM_ID, renter, provider, 7) == expected
    assert ix.escrow_pda(PROGRAM_ID, renter, provider, 8) != expected
    assert ix.escrow_pda(PROGRAM_ID, provider, renter, 7) != expected
    assert ix.config_pda(PROGRAM_ID) == Pubkey.find_program_address([b"config"], PROGRAM_ID)[0]
    assert ix.vault_address(expected, mint) == ti.get_associated_token_address(expected, mint)
    assert not expected.is_on_curve()


async def test_fetch_decodes_the_escrow_and_its_vault() -> None:
    chain = make_chain()
    address = ix.escrow_pda(PROGRAM_ID, chain.renter.pubkey(), chain.provider.pubkey(), 7)
    account = ix.EscrowAccount(version=1, bump=254, escrow=Escrow(
        status=EscrowStatus.OPEN, renter=str(chain.renter.pubkey()), provider=str(chain.provider.pubkey()),
        mint=str(chain.mint), rental_id=7, rate_per_minute=23_834, max_minutes=60, deposited=23_834 * 60,
        fee_bps=500, start_deadline=T0 + 300, started_at=T0 + 60, claimed_minutes=10, paid=226_423,
        fee_paid=11_917, refunded=0))
    chain.put_program_account(address, ix.encode_escrow(account))
    chain.mint_to(address, 23_834 * 50)  # the vault: the PDA's associated token account
    chain.set_clock(T0 + 60 + 25 * 60 + 59)
    escrow = _escrow_for(chain, LiteSvmRpc(chain.svm))
    view = await escrow.fetch(str(address))
    assert view.handle == EscrowHandle("solana", str(address), str(chain.renter.pubkey()),
                                       str(chain.provider.pubkey()), 7)
    assert (view.status, view.claimed_minutes, view.paid, view.fee_paid) == (EscrowStatus.OPEN, 10, 226_423, 11_917)
    assert view.vault_balance == view.remaining == 23_834 * 50
    assert (view.accrued_minutes, view.claimable_minutes, view.expires_at) == (25, 15, T0 + 60 + 3600)
    assert escrow.escrow_address(str(chain.renter.pubkey()), str(chain.provider.pubkey()), 7) == str(address)
    with pytest.raises(EscrowNotFound):
        await escrow.fetch(str(ix.escrow_pda(PROGRAM_ID, chain.renter.pubkey(), chain.provider.pubkey(), 8)))


async def test_send_and_confirm_creates_a_token_account() -> None:
    chain = make_chain()
    rpc = LiteSvmRpc(chain.svm)
    escrow = SolanaEscrow(rpc.client(), PROGRAM_ID, chain.provider, poll_interval_s=0.01)
    ata = await escrow.ensure_token_account()
    assert chain.svm.get_account(Pubkey.from_string(ata)) is not None
    assert "sendTransaction" in rpc.calls and "getSignatureStatuses" in rpc.calls
    assert await escrow.balance(escrow.wallet) == 0


async def test_confirmation_timeout_is_clear(autojump_clock: object) -> None:
    chain = make_chain()
    rpc = LiteSvmRpc(chain.svm)
    rpc.hold_confirmations = True
    escrow = SolanaEscrow(rpc.client(), PROGRAM_ID, chain.provider, confirm_timeout_s=5, poll_interval_s=0.5)
    with pytest.raises(ConfirmationTimeout) as caught:
        await escrow.ensure_token_account()
    assert caught.value.signature is not None and "fetch the escrow" in str(caught.value)


async def test_program_missing_is_a_ledger_error_and_nothing_moves() -> None:
    chain = make_chain()
    renter_ata = chain.mint_to(chain.renter.pubkey(), 1_000_000)
    escrow = _escrow_for(chain, LiteSvmRpc(chain.svm))
    with pytest.raises(LedgerError):
        await escrow.open(7, str(chain.provider.pubkey()), 1000, 10, T0 + 300)
    assert chain.balance(renter_ata) == 1_000_000


async def test_program_error_codes_become_escrow_refusals() -> None:
    chain = make_chain()
    rpc = LiteSvmRpc(chain.svm)

    def refuse(_raw: str, _opts: object = None) -> str:
        raise _RpcError({"code": -32002, "message": "Transaction simulation failed", "data": {
            "err": {"InstructionError": [1, {"Custom": 6009}]}, "logs": [], "accounts": None,
            "unitsConsumed": 0, "returnData": None}})

    rpc._sendTransaction = refuse  # type: ignore[method-assign,assignment]
    escrow = SolanaEscrow(rpc.client(), PROGRAM_ID, chain.provider, poll_interval_s=0.01)
    address = ix.escrow_pda(PROGRAM_ID, chain.renter.pubkey(), chain.provider.pubkey(), 7)
    account = ix.EscrowAccount(1, 254, Escrow(
        renter=str(chain.renter.pubkey()), provider=str(chain.provider.pubkey()), mint=str(chain.mint), rental_id=7,
        rate_per_minute=10, max_minutes=5, deposited=50, fee_bps=500, start_deadline=T0 + 300, started_at=T0,
        claimed_minutes=0, paid=0, fee_paid=0, refunded=0, status=EscrowStatus.OPEN))
    chain.put_program_account(address, ix.encode_escrow(account))
    handle = (await escrow.fetch(str(address))).handle
    with pytest.raises(EscrowRefused) as caught:
        await escrow.claim(handle)
    assert caught.value.code is EscrowErrorCode.NOTHING_TO_CLAIM
