"""The bubblewrap probe a provider runs at start: a slow sandbox start (a machine starting many
nodes at once; it once turned the script executor off for one of 30 bench nodes) is tried again,
and a refusal says what bwrap said. ``bwrap`` here is a stand-in script on PATH, named as such:
the real one is exercised by tests/node/test_script_isolation.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgpu.node.adapters.sandbox import probe_bwrap


def _fake_bwrap(tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "bwrap"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return exe


def test_a_slow_first_start_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    count = tmp_path / "count"
    exe = _fake_bwrap(tmp_path, f'echo x >> {count}\n[ "$(wc -l < {count})" -ge 2 ] || exec sleep 30\nexit 0',
                      monkeypatch)
    assert probe_bwrap(timeout_s=1.0) == (str(exe), "")
    assert count.read_text().count("x") == 2


def test_a_refusal_that_passes_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bwrap binds / recursively: a mount that goes away meanwhile (another node's tmpfs probe) made
    one of 50 bench nodes refuse script jobs for good."""
    count = tmp_path / "count"
    exe = _fake_bwrap(tmp_path, f'echo x >> {count}\n[ "$(wc -l < {count})" -ge 2 ] && exit 0\n'
                                'echo "bwrap: Can\'t bind mount /oldroot/ on /newroot/: Invalid argument" >&2\nexit 1',
                      monkeypatch)
    assert probe_bwrap() == (str(exe), "")


def test_a_refusal_says_why_and_a_sandbox_that_never_starts_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = _fake_bwrap(tmp_path, 'echo "bwrap: No permissions to create new namespace" >&2\nexit 1', monkeypatch)
    assert probe_bwrap() == (None, "bwrap refused: bwrap: No permissions to create new namespace")
    exe.write_text("#!/bin/sh\nexec sleep 30\n")
    path, why = probe_bwrap(timeout_s=0.3, tries=2)
    assert path is None and "did not start within" in why


def test_no_bwrap_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert probe_bwrap() == (None, "bwrap is not installed")
