"""The README works as written: its runnable blocks run, in order, against a local network.

A block marked ``<!-- readme-test: shell -->`` or ``<!-- readme-test: python -->`` (the line
before its fence) is runnable. The shell block's ``dgpu bootstrap`` and ``dgpu node`` lines are
the daemons a person starts in their own terminals: they run in the background; every other
line runs in order, from one folder, and must succeed. The Python blocks then run from that
folder against the same network. Only the README's fixed ports are swapped for free ones (the
machine may run other networks); the text is otherwise run as it stands.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_BLOCK = re.compile(r"<!-- readme-test: (shell|python) -->\n```\w*\n(.*?)\n```", re.S)
#: the README's ports, each replaced by a free one
PORTS = ("4001", "8600", "8700")
DAEMONS = ("dgpu bootstrap ", "dgpu node ")
#: generous: a loaded CI machine starts each Python process in seconds
STEP_TIMEOUT_S = 300


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(kind, code) of every runnable block, in order."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def shell_commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    out: list[str] = []
    pending = ""
    for line in code.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        out.append(pending + line)
        pending = ""
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
                          check=False)


def _wait_for(what: str, check: Callable[[], bool], procs: list[subprocess.Popen[bytes]],
              deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        for p in procs:
            assert p.poll() is None, f"a daemon exited while waiting for {what}: {p.args!r}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)  # polls a file or a local API; the daemons publish nothing to wait on


def test_marked_blocks_exist() -> None:
    kinds = [k for k, _ in readme_blocks(README.read_text())]
    assert kinds.count("shell") == 1 and kinds.count("python") >= 2


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    for name in ("DGPU_DATA_DIR", "DGPU_API_URL", "DGPU_TOKEN", "DGPU_CONFIG"):
        env.pop(name, None)
    (tmp_path / "home").mkdir()
    (tmp_path / "run").mkdir()
    yield tmp_path / "run", env


def test_readme_runs_as_written(workdir: tuple[Path, dict[str, str]]) -> None:
    cwd, env = workdir
    text = README.read_text()
    for port in PORTS:
        text = re.sub(rf"\b{port}\b", str(_free_port()), text)
    blocks = readme_blocks(text)
    daemons: list[subprocess.Popen[bytes]] = []
    renter_api = Path(env["XDG_DATA_HOME"]) / "dgpu" / "renter" / "api.json"
    outputs: list[str] = []
    try:
        for kind, code in blocks:
            if kind != "shell":
                continue
            waited_for_offer = False
            for cmd in shell_commands(code):
                if cmd.startswith(DAEMONS):
                    log = (cwd / f"daemon-{len(daemons)}.log").open("wb")
                    daemons.append(subprocess.Popen(["bash", "-c", "exec " + cmd], cwd=cwd, env=env,
                                                    stdout=log, stderr=subprocess.STDOUT))
                    if cmd.startswith("dgpu bootstrap "):
                        _wait_for("boot.addr", (cwd / "boot.addr").exists, daemons)
                    if "--api-port" in cmd:
                        _wait_for("the renter's API", renter_api.exists, daemons)
                    continue
                if cmd.startswith("dgpu rent") and not waited_for_offer:
                    # a person looks at `dgpu offers` until the provider's offer shows; so does the test
                    def offer_seen() -> bool:
                        r = _run(["dgpu", "offers", "--include-simulated", "--json"], cwd, env)
                        return r.returncode == 0 and bool(json.loads(r.stdout)["offers"])

                    _wait_for("the provider's offer", offer_seen, daemons)
                    waited_for_offer = True
                r = _run(["bash", "-c", cmd], cwd, env)
                assert r.returncode == 0, f"{cmd!r} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
                assert "Traceback" not in r.stderr, r.stderr
                outputs.append(r.stdout + r.stderr)
        assert "42" in outputs[-1]  # `cat result/answer.txt`: the job's output came back
        # `dgpu jobs logs last | head`: the reader has gone before the command writes
        logs = subprocess.Popen(["dgpu", "jobs", "logs", "last"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert logs.stdout is not None and logs.stderr is not None
        logs.stdout.close()
        err = logs.stderr.read().decode()
        assert logs.wait(timeout=STEP_TIMEOUT_S) == 141 and "Traceback" not in err, err
        # on the same network, the errors a person meets next say what to do
        r = _run(["dgpu", "rent", "--script", "job.sh", "--gpu", "H100", "--max-minutes", "1"], cwd, env)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert re.search(r"no offer matches this job; closest 1 of 1: \w+ \(RTX 4090\): GPU RTX 4090, not H100",
                         r.stderr), r.stderr
        r = _run(["dgpu", "offers"], cwd, env)
        assert r.returncode == 0 and "0 of 0 matching" in r.stdout, r.stdout
        assert "1 offer(s) of simulated GPUs hidden; `dgpu offers --include-simulated` shows them" in r.stdout
        for kind, code in blocks:
            if kind != "python":
                continue
            r = _run([sys.executable, "-c", code], cwd, env)
            assert r.returncode == 0, f"README Python block failed:\n{code}\n{r.stdout}\n{r.stderr}"
            assert "finished" in r.stdout.lower(), r.stdout
            assert "Failed to open stream" not in r.stdout + r.stderr
    finally:
        for p in daemons:
            p.send_signal(signal.SIGTERM)
        for p in daemons:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
