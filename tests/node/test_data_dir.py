"""Each role's data dir: where it defaults to, what overrides it, and one process per dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dgpu.client.settings import load_settings
from dgpu.node.adapters.data_lock import hold_data_dir
from dgpu.node.data_dir import API_FILE, default_data_dir, resolve_data_dir
from dgpu.node.errors import ConfigError


def test_roles_get_their_own_absolute_dirs(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    assert default_data_dir("provider", env) == tmp_path / "dgpu" / "provider"
    assert default_data_dir("renter", env) != default_data_dir("provider", env)
    assert default_data_dir("renter", {}).is_absolute()
    assert resolve_data_dir("rel", "renter", env) == Path.cwd() / "rel"
    assert default_data_dir("bootstrap", {**env, "DGPU_DATA_DIR": str(tmp_path / "x")}) == tmp_path / "x"


def test_the_cli_finds_its_node_from_any_folder(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path), "DGPU_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    node_dir = default_data_dir("renter", env)
    node_dir.mkdir(parents=True)
    (node_dir / API_FILE).write_text('{"url": "http://127.0.0.1:18777"}')
    s = load_settings({}, env)
    assert s.data_dir == node_dir and s.api_url == "http://127.0.0.1:18777"
    assert load_settings({"api_url": "http://127.0.0.1:1"}, env).api_url == "http://127.0.0.1:1"


def test_a_held_data_dir_refuses_a_second_holder(tmp_path: Path) -> None:
    with hold_data_dir(tmp_path / "d"):
        assert (tmp_path / "d" / "lock").read_text().strip() == str(os.getpid())
        # flock locks belong to the open file: a second open in this process conflicts too
        with pytest.raises(ConfigError, match=rf"in use by process {os.getpid()}"), hold_data_dir(tmp_path / "d"):
            pass
    with hold_data_dir(tmp_path / "d"):  # released on exit
        pass
