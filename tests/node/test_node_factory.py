"""The node factory's two choices, each made once from the config: the ledger client and the GPU source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.contracts.solana_escrow import SolanaEscrow
from dgpu.node.adapters.gpu import NvmlGpus, SimulatedGpus
from dgpu.node.app import gpu_source, open_ledger
from dgpu.node.config import NodeConfig
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.ledger import EscrowLedger
from dgpu.protocol.messages import GpuSpec

BOOT = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWGjciexZobMdVfYnGFEGesGVSpwJHpV7QQahLLMBPYbmz"
KEY = SigningKey(b"\x05" * 32)
SIM = GpuSpec(model="RTX 4090", vram_mib=24_576, simulated=True)


def config(tmp_path: Path, **over: object) -> NodeConfig:
    return NodeConfig(role="provider", bootstrap=(BOOT,), data_dir=tmp_path, **over)  # type: ignore[arg-type]


async def test_the_ledger_is_the_development_ledger_at_its_url_or_none(tmp_path: Path) -> None:
    assert open_ledger(config(tmp_path), KEY) is None  # nothing to pay with: escrows are refused
    ledger = open_ledger(config(tmp_path, ledger="dev", ledger_url="http://127.0.0.1:1"), KEY)
    assert isinstance(ledger, DevLedgerEscrow) and isinstance(ledger, EscrowLedger)
    assert ledger.wallet == KEY.public_key.wallet
    await ledger.aclose()
    with pytest.raises(ValidationError):
        config(tmp_path, ledger="solana")  # no RPC URL or program id: refused by the config, not at run time


async def test_the_solana_ledger_acts_as_the_node_key_with_the_configured_settings(tmp_path: Path) -> None:
    program = "FwS7dLgPfT2jNmtFXVhesDHXLJhpa1gPLYfxZe5Guu4P"
    ledger = open_ledger(config(tmp_path, ledger="solana", solana_rpc="http://127.0.0.1:1", program_id=program,
                                commitment="finalized", compute_unit_price=1_000), KEY)
    assert isinstance(ledger, SolanaEscrow) and isinstance(ledger, EscrowLedger)
    assert ledger.wallet == KEY.public_key.wallet and str(ledger.program_id) == program
    await ledger.aclose()
    # simulated GPUs only where the value is not real: the local endpoint on loopback, never a cluster
    config(tmp_path, ledger="solana", solana_rpc="http://127.0.0.1:8899", program_id=program, gpus=(SIM,))
    with pytest.raises(ValidationError):
        config(tmp_path, ledger="solana", solana_rpc="https://api.devnet.solana.com", program_id=program,
               gpus=(SIM,))


def test_declared_gpus_are_simulated_ones_and_real_gpus_come_from_nvml(tmp_path: Path) -> None:
    assert isinstance(gpu_source(config(tmp_path, gpus=(SIM,)), KEY), SimulatedGpus)
    assert isinstance(gpu_source(config(tmp_path), KEY), NvmlGpus)
    with pytest.raises(ValidationError):
        config(tmp_path, gpus=(GpuSpec(model="H100", vram_mib=81_920),))


async def test_a_simulated_source_offers_its_gpus_marked(tmp_path: Path) -> None:
    scan = await gpu_source(config(tmp_path, gpus=(SIM,)), KEY).inventory()
    assert [(g.model, g.simulated) for g in scan.gpus] == [("RTX 4090", True)]


def test_a_relative_data_dir_is_made_absolute_at_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = NodeConfig(role="provider", bootstrap=(BOOT,), data_dir=Path("state/node"))
    assert config.data_dir.is_absolute() and config.data_dir == tmp_path / "state" / "node"
    os.chdir("/")  # a later change of folder does not move the node's data
    assert config.data_dir == tmp_path / "state" / "node"
