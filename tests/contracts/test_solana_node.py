"""What a Solana-backed node needs of ``SolanaEscrow`` beyond the escrow instructions, on the
local development endpoint: SPL withdrawals, the endpoint's clock speed, the node API's withdraw,
and the program-wide audit of open escrows."""

from __future__ import annotations

from pathlib import Path

import pytest
from solana.rpc.async_api import AsyncClient
from solders.keypair import Keypair
from solders.signature import Signature

from dgpu.contracts.local_rpc import LocalRpc, LocalRpcInfo, fund
from dgpu.contracts.solana_audit import audit_escrows
from dgpu.contracts.solana_escrow import SolanaEscrow
from dgpu.node.services.api.wallet import WalletService

SOL = 1_000_000_000


async def test_withdraw_over_the_node_api_is_a_real_spl_transfer(local_rpc_endpoint: LocalRpcInfo) -> None:
    owner, friend = Keypair(), Keypair()
    async with AsyncClient(local_rpc_endpoint.url) as client:
        await fund(client, local_rpc_endpoint, owner, lamports=SOL, tokens=50_000)
        ledger = SolanaEscrow(client, local_rpc_endpoint.program_id, owner, poll_interval_s=0.02)
        wallet = WalletService(ledger, ledger.wallet)
        out = await wallet.withdraw(ledger.wallet, str(friend.pubkey()), 12_345)  # friend has no token account
        assert out.balance == 50_000 - 12_345 and out.real_value
        assert await ledger.balance(str(friend.pubkey())) == 12_345
        status = (await client.get_signature_statuses([Signature.from_string(out.tx)])).value[0]
        assert status is not None and status.err is None
        with pytest.raises(ValueError):
            await ledger.transfer(str(friend.pubkey()), 0)


async def test_the_clock_speed_is_read_from_the_endpoint(local_rpc_binary: Path, tmp_path: Path) -> None:
    with LocalRpc(local_rpc_binary, tmp_path / "solana", clock_speed=60) as info:
        ledger = SolanaEscrow(info.url, info.program_id, Keypair())
        try:
            assert await ledger.clock_speed() == 60
        finally:
            await ledger.aclose()


async def test_the_audit_sees_an_open_escrow_with_its_deposit_in_the_vault(local_rpc_endpoint: LocalRpcInfo) -> None:
    renter, provider = Keypair(), Keypair()
    async with AsyncClient(local_rpc_endpoint.url) as client:
        await fund(client, local_rpc_endpoint, renter, lamports=10 * SOL, tokens=100_000)
        await fund(client, local_rpc_endpoint, provider, lamports=SOL, tokens=0)
        ledger = SolanaEscrow(client, local_rpc_endpoint.program_id, renter, poll_interval_s=0.02)
        now = await ledger.now()
        opened = (await ledger.open(1, str(provider.pubkey()), 100, 10, now + 300)).escrow
        audit = await audit_escrows(client, local_rpc_endpoint.program_id)
        assert audit.live == [opened.address] and audit.conserved
        assert audit.deposited == audit.in_vaults == 1_000
        closed = await ledger.close(opened)
        assert closed.refunded == 1_000
        audit = await audit_escrows(client, local_rpc_endpoint.program_id, settled=[opened.address])
        assert audit.live == [] and audit.gone == [opened.address] and audit.conserved
