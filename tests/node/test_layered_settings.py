"""A daemon's settings: flag, then ``DGPU_<DEST>``, then the config file's table, then the default."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dgpu.client.main import _build, parse_args
from dgpu.client.settings import load_settings
from dgpu.node.cli import node_config
from dgpu.node.layered_settings import SettingsError, resolve

BOOT = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
PROGRAM = "Esc1111111111111111111111111111111111111111"
DGPU = str(Path(sys.executable).parent / "dgpu")

FILE = f"""
api_url = "http://127.0.0.1:8701"   # the renter commands' key, beside the daemons' tables

[node]
role = "provider"
bootstrap = ["{BOOT}"]
solana_rpc = "http://file.invalid:8899"
program_id = "{PROGRAM}"
metrics_port = 9400
allow_image = ["busybox", "alpine"]
allow_shell = true
price = 8334

[bootstrap]
http_port = 8601
no_ledger = true
"""


def node(tmp_path: Path, *flags: str, env: dict[str, str] | None = None, text: str = FILE) -> argparse.Namespace:
    (tmp_path / "dgpu.toml").write_text(text)
    return parse_args(["node", "--config", str(tmp_path / "dgpu.toml"), *flags], env or {})


def test_the_file_sets_every_kind_of_flag(tmp_path: Path) -> None:
    args = node(tmp_path)
    assert (args.role, args.bootstrap, args.solana_rpc, args.program_id) == (
        "provider", [BOOT], "http://file.invalid:8899", PROGRAM)
    assert (args.metrics_port, args.allow_image, args.allow_shell, args.price) == (
        9400, ["busybox", "alpine"], True, 8334)
    # what no layer sets keeps the flag's default
    assert (args.region, args.executor, args.allow_forward, args.offer_ttl) == ("local", [], False, 300)
    c = node_config(args)
    assert (c.solana_rpc, c.metrics_port, c.allowed_images, c.price_per_gpu_minute) == (
        "http://file.invalid:8899", 9400, ("busybox", "alpine"), 8334)


def test_the_environment_beats_the_file_and_a_flag_beats_both(tmp_path: Path) -> None:
    env = {"DGPU_SOLANA_RPC": "http://env.invalid:8899", "DGPU_METRICS_PORT": "9401",
           "DGPU_ALLOW_IMAGE": "python:3.11, ubuntu", "DGPU_ALLOW_SHELL": "false"}
    args = node(tmp_path, env=env)
    assert (args.solana_rpc, args.metrics_port, args.allow_image, args.allow_shell) == (
        "http://env.invalid:8899", 9401, ["python:3.11", "ubuntu"], False)
    args = node(tmp_path, "--solana-rpc", "http://flag.invalid:8899", "--metrics-port", "9402",
                "--allow-image", "debian", "--allow-shell", env=env)
    # a repeated flag replaces the lower layers' list, it does not add to it
    assert (args.solana_rpc, args.metrics_port, args.allow_image, args.allow_shell) == (
        "http://flag.invalid:8899", 9402, ["debian"], True)
    assert node(tmp_path, env={"DGPU_METRICS_PORT": ""}).metrics_port == 9400  # empty counts as unset


def test_the_bootstrap_command_reads_its_own_table(tmp_path: Path) -> None:
    (tmp_path / "dgpu.toml").write_text(FILE)
    args = parse_args(["bootstrap"], {"DGPU_CONFIG": str(tmp_path / "dgpu.toml")})
    assert (args.http_port, args.no_ledger, args.metrics_port, args.ledger_clock_speed) == (8601, True, None, 1)


def test_the_renter_commands_accept_the_daemons_tables(tmp_path: Path) -> None:
    (tmp_path / "dgpu.toml").write_text(FILE)
    s = load_settings({"config": str(tmp_path / "dgpu.toml"), "data_dir": str(tmp_path)}, {})
    assert s.api_url == "http://127.0.0.1:8701"


def _refused(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    (tmp_path / "dgpu.toml").write_text(text)
    _, daemons = _build()
    ns = daemons["node"].parse_args(["--config", str(tmp_path / "dgpu.toml")])
    with pytest.raises(SettingsError) as info:
        resolve(daemons["node"], ns, table="node", env=env or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_unknown_key_is_refused_naming_it_and_the_file(tmp_path: Path) -> None:
    message = _refused(tmp_path, FILE.replace("price = 8334", "prize = 8334"))
    assert message == f"config file {tmp_path / 'dgpu.toml'}: unknown key prize in [node]"


def test_a_bad_value_reads_like_a_bad_flag(tmp_path: Path) -> None:
    path = tmp_path / "dgpu.toml"
    assert _refused(tmp_path, FILE.replace("9400", '"lots"')) == (
        f"config file {path}: metrics_port: argument --metrics-port: invalid int value: 'lots'")
    assert "invalid choice: 'gpu'" in _refused(tmp_path, FILE.replace('"provider"', '"gpu"'))
    assert "takes a list" in _refused(tmp_path, FILE.replace('["busybox", "alpine"]', '"busybox"'))
    assert "is a switch" in _refused(tmp_path, FILE.replace("allow_shell = true", 'allow_shell = "maybe"'))
    assert _refused(tmp_path, FILE, {"DGPU_PRICE": "cheap"}) == (
        "DGPU_PRICE: argument --price: invalid int value: 'cheap'")
    assert "DGPU_EXECUTOR: argument --executor: invalid choice: 'vm'" in _refused(
        tmp_path, FILE, {"DGPU_EXECUTOR": "docker,vm"})
    assert "--role is required" in _refused(tmp_path, FILE.replace('role = "provider"', ""))
    assert "is not valid TOML" in _refused(tmp_path, "[node\n")


def test_a_config_file_asked_for_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["bootstrap"], {"DGPU_CONFIG": str(tmp_path / "missing.toml")})
    assert info.value.code == 2


def test_the_real_command_refuses_a_bad_value_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "dgpu.toml").write_text(FILE.replace("9400", '"x"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGPU_")}
    r = subprocess.run([DGPU, "node", "--config", str(tmp_path / "dgpu.toml")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"dgpu node: error: config file {tmp_path / 'dgpu.toml'}: metrics_port: argument --metrics-port: "
        "invalid int value: 'x'")


def test_the_readme_example_is_a_valid_configuration(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dgpu.toml").write_text(example)
    env = {"DGPU_CONFIG": str(tmp_path / "dgpu.toml")}
    args = parse_args(["node"], env)
    assert (args.role, args.executor, args.allow_image, args.metrics_port) == (
        "provider", ["docker"], ["busybox", "python:3.11-slim"], 9400)
    assert parse_args(["bootstrap"], env).ledger_clock_speed == 60
    assert load_settings({"data_dir": str(tmp_path)}, env).api_url == "http://127.0.0.1:8700"
