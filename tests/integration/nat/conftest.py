"""A dGPU network across a real NAT, built from network namespaces (``dgpu.node.adapters.netns``).

``lab``: a public namespace (bootstrap nodes, the renter) and homes behind NAT routers that drop
every connection opened from outside. ``nat_net``: the bootstrap node (relay, dial-back, the
development ledger) in the public namespace and one provider in home 1, started as OS processes
inside those namespaces. The renter is ``python -m dgpu.client.nat_demo``, run in the public (or another
home's) namespace: one paid rental, printed as JSON.

Skipped with the reason where namespaces cannot be built (not root, no ``ip``/``iptables``);
never skipped under CI (``CI=true``): there a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from network.conftest import Network  # tests/integration is on sys.path

from dgpu.node.adapters.netns import NatLab, nat_lab, unavailable

RENTER_TIMEOUT_S = 240
PRICE = 100
#: a metered minute per wall second, frequent escrow polls: rentals of seconds, billed in minutes
PROVIDER_FLAGS = ("--executor", "script", "--meter-interval", "1", "--billing-poll", "0.3",
                  "--claim-interval", "120", "--billing-grace", "60", "--start-window", "30")


def _lab_or_skip(homes: int) -> Iterator[NatLab]:
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"NAT tests must run in CI, but: {reason}")
        pytest.skip(f"NAT tests need network namespaces: {reason}")
    with nat_lab(homes=homes) as lab:
        yield lab


def start_network(lab: NatLab, workdir: Path, *, bootstraps: int = 1, provider_home: int = 0,
                  provider_flags: tuple[str, ...] = ()) -> Network:
    """Bootstrap node(s) on the public segment, one provider in ``lab.homes[provider_home]``."""
    net = Network(workdir)
    pub = lab.cmd(lab.public_ns, [])
    for i in range(bootstraps):
        # ledger clock x60: a job of a few seconds is billed a few minutes
        net.start_bootstrap("--host", lab.public_ip, "--http-host", lab.public_ip,
                            "--ledger-clock-speed", "60",
                            name="bootstrap" if i == 0 else f"bootstrap{i + 1}", prefix=pub)
    home = lab.homes[provider_home]
    extra = [a for name, p in net.procs.items() if name != "bootstrap" for a in ("--bootstrap", p.addr)]
    net.provider("provider", "RTX 4090:24576:1", PRICE, "--host", home.ip, *PROVIDER_FLAGS,
                 *extra, *provider_flags, prefix=lab.cmd(home.ns, []))
    return net


def start_renter(lab: NatLab, net: Network, ns: str, *args: str,
                 bootstraps: list[str] | None = None) -> subprocess.Popen[str]:
    """``python -m dgpu.client.nat_demo`` inside ``ns`` (joined through ``bootstraps``, default all)."""
    names = bootstraps or [n for n in net.procs if n.startswith("bootstrap")]
    boots = [a for n in names for a in ("--bootstrap", net.procs[n].addr)]
    cmd = [sys.executable, "-m", "dgpu.client.nat_demo", *boots, "--ledger-url", net.ledger_url, *args]
    return subprocess.Popen(lab.cmd(ns, cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report_of(renter: subprocess.Popen[str]) -> dict[str, Any]:
    """The renter's JSON report once it exits."""
    try:
        stdout, stderr = renter.communicate(timeout=RENTER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        renter.kill()
        stdout, stderr = renter.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, f"the renter printed no report (rc {renter.returncode}):\n{stderr[-4000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    report["_stderr"] = stderr[-4000:]
    return report


def run_renter(lab: NatLab, net: Network, ns: str, *args: str,
               bootstraps: list[str] | None = None) -> dict[str, Any]:
    return report_of(start_renter(lab, net, ns, *args, bootstraps=bootstraps))


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    yield from _lab_or_skip(homes=2)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dgpu-nat-"))
    path.chmod(0o711)  # a root provider runs script jobs as nobody below it
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
