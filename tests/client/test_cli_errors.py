"""Errors a person can act on, through the real ``dgpu`` command in a subprocess: each says what
is wrong in one line, exits non-zero, and prints no traceback."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dgpu.client.main import _parser

DGPU = str(Path(sys.executable).parent / "dgpu")
#: a loaded machine starts a Python process with libp2p in seconds
TIMEOUT_S = 180


def _env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp / "xdg")}
    for name in ("DGPU_DATA_DIR", "DGPU_API_URL", "DGPU_TOKEN", "DGPU_CONFIG"):
        env.pop(name, None)
    return env


def dgpu(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DGPU, *args], cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)


def _one_line_error(r: subprocess.CompletedProcess[str], pattern: str, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "ExceptionGroup" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.search(pattern, last), r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, int, int]]:
    """A running bootstrap node: (its folder, its multiaddr, its HTTP port, its PID)."""
    tmp = tmp_path_factory.mktemp("boot")
    http_port = _free_port()
    proc = subprocess.Popen([DGPU, "bootstrap", "--port", "0", "--http-port", str(http_port), "--data-dir",
                             str(tmp / "data"), "--addr-file", str(tmp / "addr")], cwd=tmp, env=_env(tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # its log says when it listens; the addr file follows at once
            if b"listening on" in line:
                break
        else:
            pytest.fail("the bootstrap node exited")
        # the HTTP server starts after the p2p listener; its log line comes later
        for line in proc.stderr:
            if b"http" in line.lower():
                break
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let its log pipe fill
        yield tmp, (tmp / "addr").read_text().strip(), http_port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_second_process_on_a_data_dir_names_the_holder(bootstrap: tuple[Path, str, int, int]) -> None:
    tmp, _, _, pid = bootstrap
    r = dgpu(tmp, "bootstrap", "--port", "0", "--http-port", "0", "--data-dir", str(tmp / "data"))
    _one_line_error(r, rf"data dir .* is in use by process {pid}\b")


def test_http_port_in_use(bootstrap: tuple[Path, str, int, int]) -> None:
    tmp, _, http_port, _ = bootstrap
    r = dgpu(tmp, "bootstrap", "--port", "0", "--http-port", str(http_port), "--data-dir", str(tmp / "other"))
    _one_line_error(r, rf"^dgpu bootstrap: .*{http_port}.*in use")


def test_p2p_port_in_use(bootstrap: tuple[Path, str, int, int]) -> None:
    tmp, addr, _, _ = bootstrap
    port = addr.split("/tcp/")[1].split("/")[0]
    r = dgpu(tmp, "bootstrap", "--port", port, "--http-port", "0", "--data-dir", str(tmp / "third"))
    _one_line_error(r, rf"^dgpu bootstrap: port {port} .* already in use")


def test_wrong_bootstrap_peer_id(bootstrap: tuple[Path, str, int, int]) -> None:
    tmp, addr, _, _ = bootstrap
    other = "12D3KooWEVSr7dNNSxugH7nE5DnwvN2zvgAraKcQMZPiBtppS1S4"
    wrong = addr.rsplit("/p2p/", 1)[0] + "/p2p/" + other
    r = dgpu(tmp, "node", "--role", "renter", "--bootstrap", wrong, "--data-dir", str(tmp / "renter"))
    _one_line_error(r, rf"^dgpu node: no bootstrap node reachable .*peer id mismatch: .* not {other}")


def test_unreachable_bootstrap_gives_up_after_bounded_tries(tmp_path: Path) -> None:
    nobody = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/12D3KooWEVSr7dNNSxugH7nE5DnwvN2zvgAraKcQMZPiBtppS1S4"
    r = dgpu(tmp_path, "node", "--role", "renter", "--bootstrap", nobody, "--join-tries", "3",
             "--data-dir", str(tmp_path / "renter"))
    _one_line_error(r, r"^dgpu node: no bootstrap node reachable \(1 tried\): .*cannot reach")


def test_bad_image_name_is_refused_before_submitting(tmp_path: Path) -> None:
    r = dgpu(tmp_path, "rent", "--image", "Not An/Image!", "--api-url", "http://127.0.0.1:9")
    _one_line_error(r, r"not a Docker image name", code=2)


def test_version(tmp_path: Path) -> None:
    r = dgpu(tmp_path, "--version")
    assert r.returncode == 0 and re.fullmatch(r"dgpu \d+\.\d+\.\d+\S*\n", r.stdout), r.stdout


def test_every_subcommand_and_flag_is_described() -> None:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert command.description, f"dgpu {name} has no description"
        for action in command._actions:
            assert action.help, f"dgpu {name} {action.option_strings or action.dest} has no help"
        assert "(default:" in command.format_help(), f"dgpu {name} does not show its defaults"
