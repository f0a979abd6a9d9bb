"""The real ``SolanaEscrow`` through the real program on the local development endpoint.

Every instruction here executes the dgpu_escrow program (natively, in solana-program-test) with the
real SPL Token and ATA programs; nothing is simulated in Python. The endpoint's clock stands still
(``--clock-speed 0``) and moves only by ``dgpu_advanceClock``, so minutes are exact. Conservation is
read back from chain accounts: token balances, the mint's supply and the escrow account.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from solana.rpc.async_api import AsyncClient
from solana.rpc.types import MemcmpOpts
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.token.state import Mint
from solders.transaction import Transaction
from spl.token.instructions import get_associated_token_address

from dgpu.client.wallet import solana_wallet_report
from dgpu.contracts import solana_ix as ix
from dgpu.contracts.errors import EscrowNotFound, EscrowRefused
from dgpu.contracts.escrow_api import EscrowHandle
from dgpu.contracts.local_rpc import LocalRpc, LocalRpcInfo, advance_clock, fund, rpc_call
from dgpu.contracts.solana_escrow import SolanaEscrow
from dgpu.protocol.errors import EscrowErrorCode

SOL = 1_000_000_000
RATE = 23_834
DEPOSIT_TOKENS = 1_000_000_000
M = 60


def fee_for(minutes: int, fee_bps: int = 500) -> int:
    return minutes * RATE * fee_bps // 10_000


@dataclass
class Parties:
    info: LocalRpcInfo
    client: AsyncClient
    renter: SolanaEscrow
    provider: SolanaEscrow
    stranger: SolanaEscrow

    async def token(self, address: Pubkey) -> int:
        data = await self.renter._account(address)
        return 0 if data is None else int.from_bytes(data[64:72], "little")

    async def balances(self, handle: EscrowHandle) -> dict[str, int]:
        mint = self.info.mint
        vault = ix.vault_address(Pubkey.from_string(handle.address), mint)
        return {
            "renter": await self.renter.balance(handle.renter),
            "provider": await self.renter.balance(handle.provider),
            "treasury": await self.token(self.info.treasury),
            "vault": await self.token(vault),
        }

    async def supply(self) -> int:
        data = await self.renter._account(self.info.mint)
        assert data is not None
        return Mint.from_bytes(data).supply


@asynccontextmanager
async def parties(info: LocalRpcInfo) -> AsyncIterator[Parties]:
    keys = {name: Keypair() for name in ("renter", "provider", "stranger")}
    async with AsyncClient(info.url) as client:
        await fund(client, info, keys["renter"], lamports=10 * SOL, tokens=DEPOSIT_TOKENS)
        await fund(client, info, keys["provider"], lamports=SOL, tokens=0)
        await fund(client, info, keys["stranger"], lamports=SOL, tokens=0)
        escrows = {name: SolanaEscrow(client, info.program_id, key, poll_interval_s=0.02)
                   for name, key in keys.items()}
        yield Parties(info, client, escrows["renter"], escrows["provider"], escrows["stranger"])


@pytest.fixture
def frozen_endpoint(local_rpc_binary: Path, tmp_path: Path) -> Iterator[LocalRpcInfo]:
    with LocalRpc(local_rpc_binary, tmp_path / "solana", clock_speed=0, start_time=1_700_000_000) as info:
        yield info


async def _conserved(p: Parties, handle: EscrowHandle) -> dict[str, int]:
    balances = await p.balances(handle)
    assert sum(balances.values()) == DEPOSIT_TOKENS == await p.supply()
    return balances


async def test_a_whole_rental_open_start_claim_top_up_close(frozen_endpoint: LocalRpcInfo) -> None:
    async with parties(frozen_endpoint) as p:
        now = await p.renter.now()
        assert now == 1_700_000_000
        sol_before = await p.renter.sol_balance()
        opened = await p.renter.open(7, p.provider.wallet, RATE, 60, now + 300)
        handle = opened.escrow
        assert opened.deposited == RATE * 60
        assert await _conserved(p, handle) == {"renter": DEPOSIT_TOKENS - RATE * 60, "provider": 0, "treasury": 0,
                                              "vault": RATE * 60}
        with pytest.raises(EscrowRefused) as refused:
            await p.renter.start(handle)  # only the provider starts
        assert refused.value.code is EscrowErrorCode.UNAUTHORIZED
        with pytest.raises(EscrowRefused) as refused:
            await p.provider.claim(handle)
        assert refused.value.code is EscrowErrorCode.NOT_STARTED

        started = await p.provider.start(handle)
        assert started.now == now
        assert await p.renter.settlement(handle) is None  # open: nothing settled yet
        await advance_clock(p.info.url, 10 * M + 59)
        claimed = await p.provider.claim(handle)
        assert (claimed.paid, claimed.fee) == (RATE * 10 - fee_for(10), fee_for(10))
        topped = await p.renter.top_up(handle, 5)
        assert topped.deposited == RATE * 5
        view = await p.renter.fetch(handle.address)
        assert (view.max_minutes, view.deposited, view.claimed_minutes) == (65, RATE * 65, 10)
        await advance_clock(p.info.url, 5 * M)
        closed = await p.renter.close(handle)
        # 15 whole minutes in all (the extra 59 s are not a minute); the fee is cumulative
        assert (closed.paid, closed.fee) == (RATE * 5 - (fee_for(15) - fee_for(10)), fee_for(15) - fee_for(10))
        assert closed.refunded == RATE * 50
        assert await _conserved(p, handle) == {
            "renter": DEPOSIT_TOKENS - RATE * 15, "provider": RATE * 15 - fee_for(15), "treasury": fee_for(15),
            "vault": 0}
        assert closed.paid + closed.fee + closed.refunded + claimed.paid + claimed.fee == RATE * 65
        # the whole accounting, summed from the transactions that named the escrow (its account is gone)
        for side in (p.renter, p.provider):
            settled = await side.settlement(handle)
            assert settled is not None and settled.exit_tx == closed.tx
            assert (settled.deposited, settled.paid, settled.fee, settled.refunded) == (
                RATE * 65, RATE * 15 - fee_for(15), fee_for(15), RATE * 50)
        # the escrow and its vault are closed, their rent back to the renter: the renter paid three
        # transaction fees and the rent of its rental-id record (once per renter), nothing else
        assert await p.renter._account(Pubkey.from_string(handle.address)) is None
        record = (await p.client.get_minimum_balance_for_rent_exemption(8 + 1 + 1 + 32 + 8 + 8)).value
        assert sol_before - await p.renter.sol_balance() == 3 * 5_000 + record
        with pytest.raises(EscrowNotFound):
            await p.provider.claim(handle)
        # and the rental never revives: rental ids of a renter only increase
        with pytest.raises(EscrowRefused) as refused:
            await p.renter.open(7, p.provider.wallet, RATE, 60, now + 15 * M + 300)
        assert refused.value.code is EscrowErrorCode.RENTAL_ID_USED


async def test_refund_unstarted_after_the_deadline(frozen_endpoint: LocalRpcInfo) -> None:
    async with parties(frozen_endpoint) as p:
        now = await p.renter.now()
        handle = (await p.renter.open(8, p.provider.wallet, RATE, 30, now + 300)).escrow
        with pytest.raises(EscrowRefused) as refused:
            await p.renter.refund_unstarted(handle)
        assert refused.value.code is EscrowErrorCode.START_DEADLINE_NOT_REACHED
        await advance_clock(p.info.url, 300)
        with pytest.raises(EscrowRefused) as refused:
            await p.provider.start(handle)
        assert refused.value.code is EscrowErrorCode.START_DEADLINE_PASSED
        refund = await p.renter.refund_unstarted(handle)
        assert refund.refunded == RATE * 30
        settled = await p.renter.settlement(handle)
        assert settled is not None
        assert (settled.deposited, settled.charged, settled.refunded) == (RATE * 30, 0, RATE * 30)
        assert await _conserved(p, handle) == {"renter": DEPOSIT_TOKENS, "provider": 0, "treasury": 0, "vault": 0}


async def test_settle_expired_by_a_stranger_once_the_clock_passes_expiry(frozen_endpoint: LocalRpcInfo) -> None:
    async with parties(frozen_endpoint) as p:
        now = await p.renter.now()
        handle = (await p.renter.open(9, p.provider.wallet, RATE, 3, now + 300)).escrow
        await p.provider.start(handle)
        await advance_clock(p.info.url, 3 * M - 1)
        with pytest.raises(EscrowRefused) as refused:
            await p.stranger.settle_expired(handle)
        assert refused.value.code is EscrowErrorCode.NOT_EXPIRED
        await advance_clock(p.info.url, 1)
        settled = await p.stranger.settle_expired(handle)
        assert (settled.paid, settled.fee, settled.refunded) == (RATE * 3 - fee_for(3), fee_for(3), 0)
        assert await _conserved(p, handle) == {"renter": DEPOSIT_TOKENS - RATE * 3, "provider": RATE * 3 - fee_for(3),
                                              "treasury": fee_for(3), "vault": 0}


async def test_receipts_can_come_from_get_transaction_token_balances(frozen_endpoint: LocalRpcInfo) -> None:
    async with parties(frozen_endpoint) as p:
        now = await p.renter.now()
        handle = (await p.renter.open(10, p.provider.wallet, RATE, 60, now + 300)).escrow
        await p.provider.start(handle)
        await advance_clock(p.info.url, 4 * M)
        claimed = await p.provider.claim(handle)
        tx = (await p.client.get_transaction(Signature.from_string(claimed.tx),
                                             max_supported_transaction_version=0)).value
        assert tx is not None and tx.transaction.meta is not None
        meta = tx.transaction.meta
        assert meta.err is None and meta.fee == 5_000
        provider_ata = get_associated_token_address(Pubkey.from_string(p.provider.wallet), p.info.mint)
        keys = tx.transaction.transaction.message.account_keys  # type: ignore[union-attr]

        def amount(balances: object, address: Pubkey) -> int:
            for b in balances or []:  # type: ignore[attr-defined]
                if keys[b.account_index] == address:
                    return int(b.ui_token_amount.amount)
            return 0

        assert amount(meta.post_token_balances, provider_ata) - amount(meta.pre_token_balances, provider_ata) \
            == claimed.paid == RATE * 4 - fee_for(4)
        assert amount(meta.post_token_balances, p.info.treasury) - amount(meta.pre_token_balances, p.info.treasury) \
            == claimed.fee


async def test_get_program_accounts_lists_the_renters_escrows(frozen_endpoint: LocalRpcInfo) -> None:
    async with parties(frozen_endpoint) as p:
        now = await p.renter.now()
        first = (await p.renter.open(11, p.provider.wallet, RATE, 5, now + 300)).escrow
        second = (await p.renter.open(12, p.provider.wallet, RATE, 5, now + 300)).escrow
        renter_offset = 8 + 3  # discriminator, version, bump, status
        found = (await p.client.get_program_accounts(
            p.info.program_id, encoding="base64",
            filters=[ix.ESCROW_SPACE, MemcmpOpts(offset=renter_offset, bytes=p.renter.wallet)])).value
        assert sorted(str(a.pubkey) for a in found) == sorted([first.address, second.address])
        assert all(ix.decode_escrow(bytes(a.account.data)).escrow.renter == p.renter.wallet
                   for a in found)
        nobody = (await p.client.get_program_accounts(
            p.info.program_id, encoding="base64",
            filters=[MemcmpOpts(offset=renter_offset, bytes=p.stranger.wallet)])).value
        assert nobody == []


async def test_errors_are_shaped_like_a_validators(frozen_endpoint: LocalRpcInfo) -> None:
    info = frozen_endpoint
    async with parties(info) as p:
        payer = Keypair()
        await p.client.request_airdrop(payer.pubkey(), SOL)
        pay = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Pubkey.new_unique(), lamports=1))
        # a blockhash the ledger never produced: refused in preflight, nothing lands
        stale = Hash.new_unique()
        tx = Transaction([payer], Message.new_with_blockhash([pay], payer.pubkey(), stale), stale)
        answer = await rpc_call(info.url, "sendTransaction", base64.b64encode(bytes(tx)).decode(),
                                {"encoding": "base64"})
        assert answer["error"]["code"] == -32002 and answer["error"]["data"]["err"] == "BlockhashNotFound"
        # a signature that does not verify
        blockhash = (await p.client.get_latest_blockhash()).value.blockhash
        raw = bytearray(bytes(Transaction([payer], Message.new_with_blockhash([pay], payer.pubkey(), blockhash),
                                          blockhash)))
        raw[10] ^= 0xFF
        answer = await rpc_call(info.url, "sendTransaction", base64.b64encode(bytes(raw)).decode(),
                                {"encoding": "base64"})
        assert answer["error"]["code"] == -32003
        answer = await rpc_call(info.url, "getNoSuchThing")
        assert answer["error"]["code"] == -32601
        # a program error keeps its instruction index and custom code
        now = await p.renter.now()
        handle = (await p.renter.open(13, p.provider.wallet, RATE, 5, now + 300)).escrow
        start = ix.build(info.program_id, "start", {"provider": Pubkey.from_string(p.renter.wallet),
                                                     "escrow": Pubkey.from_string(handle.address)})
        renter_kp = p.renter._keypair
        tx = Transaction([renter_kp], Message.new_with_blockhash([start], renter_kp.pubkey(), blockhash), blockhash)
        answer = await rpc_call(info.url, "sendTransaction", base64.b64encode(bytes(tx)).decode(),
                                {"encoding": "base64"})
        unauthorized = 6000 + ix.PROGRAM_ERRORS.index("Unauthorized")
        assert answer["error"]["data"]["err"] == {"InstructionError": [0, {"Custom": unauthorized}]}
        assert answer["error"]["message"].startswith("Transaction simulation failed")


async def test_basic_methods_wallet_report_and_clock(local_rpc_endpoint: LocalRpcInfo) -> None:
    info = local_rpc_endpoint
    async with parties(info) as p:
        assert (await rpc_call(info.url, "getHealth"))["result"] == "ok"
        assert "solana-core" in (await rpc_call(info.url, "getVersion"))["result"]
        rent = (await p.client.get_minimum_balance_for_rent_exemption(165)).value
        assert rent == 2_039_280
        report = await solana_wallet_report(p.provider)
        assert report["sol_lamports"] == SOL and report["decimals"] == info.decimals == 6
        token = (await p.client.get_token_account_balance(
            get_associated_token_address(Pubkey.from_string(p.renter.wallet), info.mint))).value
        assert (token.amount, token.decimals, token.ui_amount_string) == (str(DEPOSIT_TOKENS), 6, "1000")
        accounts = (await p.client.get_multiple_accounts([info.mint, Pubkey.new_unique()])).value
        assert accounts[0] is not None and accounts[1] is None
        before = await p.renter.now()
        after = await advance_clock(info.url, 3600)
        assert after >= before + 3600 and await p.renter.now() >= after
        config = await p.renter.config()
        assert (config.mint, config.treasury, config.fee_bps) == (info.mint, info.treasury, info.fee_bps)


async def test_a_blockhash_outlives_an_idle_second_and_requests(frozen_endpoint: LocalRpcInfo) -> None:
    # program-test registers a blockhash every 6.4 ms of runtime and keeps 150 (about 1 s); the
    # endpoint drives that runtime only while it answers, so idle time ages no blockhash. The
    # sleep is the behaviour under test (a client that signs, then waits), not a synchronisation.
    info = frozen_endpoint
    async with AsyncClient(info.url) as client:
        payer = Keypair()
        await client.request_airdrop(payer.pubkey(), SOL)
        blockhash = (await client.get_latest_blockhash()).value.blockhash
        for _ in range(20):
            await client.get_balance(payer.pubkey())
        await trio.sleep(1.5)
        to = Pubkey.new_unique()
        pay = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=1_000_000))
        tx = Transaction([payer], Message.new_with_blockhash([pay], payer.pubkey(), blockhash), blockhash)
        answer = await rpc_call(info.url, "sendTransaction", base64.b64encode(bytes(tx)).decode(),
                                {"encoding": "base64"})
        assert "result" in answer, answer
        assert (await client.get_balance(to)).value == 1_000_000
