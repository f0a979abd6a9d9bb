"""``dgpu node``'s Solana settings: a flag wins, then its ``DGPU_*`` variable, then the default
(the generic layer, ``dgpu.node.layered_settings``, applied to the Solana flags)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from dgpu.node.cli import add_node_command, node_config
from dgpu.node.config import NodeConfig
from dgpu.node.layered_settings import SettingsError, resolve

BOOT = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
PROGRAM = "Esc1111111111111111111111111111111111111111"
MINT = "Mint111111111111111111111111111111111111111"


def config(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> NodeConfig:
    parser = argparse.ArgumentParser()
    node = add_node_command(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["node", "--role", "renter", "--bootstrap", BOOT, "--data-dir", str(tmp_path), *flags])
    (tmp_path / "empty.toml").write_text("")  # only the environment and the flags count here
    env = {"DGPU_CONFIG": str(tmp_path / "empty.toml"), **(env or {})}
    return node_config(resolve(node, args, table="node", env=env))


def test_every_solana_setting_comes_from_its_environment_variable(tmp_path: Path) -> None:
    env = {"DGPU_LEDGER": "solana", "DGPU_SOLANA_RPC": "https://api.devnet.solana.com",
           "DGPU_PROGRAM_ID": PROGRAM, "DGPU_MINT": MINT, "DGPU_COMMITMENT": "finalized",
           "DGPU_COMPUTE_UNIT_PRICE": "1000", "DGPU_COMPUTE_UNIT_LIMIT": "200000"}
    c = config(tmp_path, env=env)
    assert (c.ledger, c.solana_rpc, c.program_id, c.mint, c.commitment) == (
        "solana", "https://api.devnet.solana.com", PROGRAM, MINT, "finalized")
    assert (c.compute_unit_price, c.compute_unit_limit) == (1000, 200_000)
    assert not c.development_ledger  # a remote cluster holds real value


def test_a_flag_beats_its_environment_variable(tmp_path: Path) -> None:
    env = {"DGPU_LEDGER": "solana", "DGPU_SOLANA_RPC": "https://api.devnet.solana.com", "DGPU_PROGRAM_ID": PROGRAM,
           "DGPU_COMMITMENT": "finalized", "DGPU_COMPUTE_UNIT_PRICE": "1000"}
    c = config(tmp_path, "--solana-rpc", "http://127.0.0.1:8899", "--commitment", "processed",
               "--compute-unit-price", "7", env=env)
    assert (c.solana_rpc, c.commitment, c.compute_unit_price, c.program_id) == (
        "http://127.0.0.1:8899", "processed", 7, PROGRAM)
    assert config(tmp_path, "--ledger", "dev", env=env).ledger == "dev"


def test_neither_flag_nor_variable_leaves_the_defaults(tmp_path: Path) -> None:
    c = config(tmp_path, env={"DGPU_SOLANA_RPC": ""})  # an empty variable counts as unset
    assert (c.ledger, c.solana_rpc, c.commitment, c.compute_unit_price, c.compute_unit_limit) == (
        "dev", None, "confirmed", None, None)


def test_a_bad_variable_is_refused_like_a_bad_flag(tmp_path: Path) -> None:
    base = {"DGPU_LEDGER": "solana", "DGPU_SOLANA_RPC": "http://127.0.0.1:8899", "DGPU_PROGRAM_ID": PROGRAM}
    with pytest.raises(SettingsError, match=r"^DGPU_COMMITMENT: argument --commitment: invalid choice: 'eventually'"):
        config(tmp_path, env={**base, "DGPU_COMMITMENT": "eventually"})
    with pytest.raises(SettingsError, match=r"^DGPU_COMPUTE_UNIT_LIMIT: .* invalid int value: 'lots'"):
        config(tmp_path, env={**base, "DGPU_COMPUTE_UNIT_LIMIT": "lots"})
    with pytest.raises(ValidationError, match="needs solana_rpc and program_id"):
        config(tmp_path, env={"DGPU_LEDGER": "solana"})
