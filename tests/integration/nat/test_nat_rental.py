"""Paid rentals of a provider behind a real NAT (network namespaces, iptables MASQUERADE).

The provider sits in a home whose router drops every connection opened from outside, so no
renter can dial it; it learns that from the bootstrap node's dial-back, reserves a slot on the
bootstrap's relay and advertises only its ``/p2p-circuit`` address. Each test runs one full paid
rental (negotiation, the job's logs, the result download) and checks the escrow on the ledger.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from network.conftest import Network  # tests/integration is on sys.path

from dgpu.node.adapters.netns import NatLab
from nat.conftest import PRICE, report_of, run_renter, start_network, start_renter

pytestmark = pytest.mark.integration

def _dial(lab: NatLab, ns: str, ip: str, port: int) -> bool:
    """A plain TCP connect from inside ``ns`` (2 s)."""
    code = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=2).close()"
    done = subprocess.run(lab.cmd(ns, [sys.executable, "-c", code]), capture_output=True, check=False)
    return done.returncode == 0


def _port_of(addr: str) -> int:
    return int(addr.split("/tcp/")[1].split("/", maxsplit=1)[0])


def _wait_log(net: Network, name: str, text: str, timeout_s: float = 60.0) -> None:
    path = net.workdir / f"{name}.log"
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{name} never logged {text!r}:\n{path.read_text()[-3000:]}"
        time.sleep(0.1)


def _assert_paid_rental(report: dict[str, Any]) -> None:
    """Finished, every log line arrived, the result is the job's, the escrow adds up."""
    assert report["state"] == "finished", report
    logs = report["logs"].splitlines()
    assert logs[0] == "started" and logs[-1] == "done" and "tick 3" in logs
    assert report["download_bytes"] == 1 << 20
    assert report["result_sha256"] == logs[1]  # the job hashed the file it left
    esc = report["escrow"]
    assert esc["status"] == "closed"
    assert esc["paid"] + esc["fee"] + esc["refunded"] == esc["deposited"]
    assert esc["paid"] + esc["fee"] == esc["minutes"] * esc["rate"] > 0  # billed once, per minute
    assert esc["rate"] == PRICE


def _stop(net: Network) -> None:
    codes = net.stop_all()
    assert all(c is not None for c in codes.values()), f"processes ignored SIGTERM: {codes}"


def test_a_renter_rents_a_provider_behind_nat_through_the_relay(lab: NatLab, workdir: Path) -> None:
    net = start_network(lab, workdir)
    try:
        home = lab.homes[0]
        provider_port = _port_of(net.procs["provider"].addr)
        assert not _dial(lab, lab.public_ns, home.ip, provider_port), "the home is not behind NAT"
        assert not _dial(lab, lab.public_ns, home.wan_ip, provider_port), "the router forwards inbound"
        assert _dial(lab, home.ns, lab.public_ip, _port_of(net.bootstrap)), "the home cannot get out"

        report = run_renter(lab, net, lab.public_ns)
        _assert_paid_rental(report)
        assert report["path"] == "relay" and report["path_after"] == "relay"
        relay_id = net.bootstrap.rsplit("/p2p/", 1)[1]
        assert report["offer_addrs"] and all(f"/p2p/{relay_id}/p2p-circuit/p2p/" in a
                                             for a in report["offer_addrs"])
        _wait_log(net, "provider", "reachability: private")
    finally:
        _stop(net)


def test_two_nats_rent_over_a_hole_punched_connection(lab: NatLab, workdir: Path) -> None:
    net = start_network(lab, workdir)
    try:
        renter_home = lab.homes[1]
        report = run_renter(lab, net, renter_home.ns, "--listen-host", renter_home.ip)
        _assert_paid_rental(report)
        # the renter dialled through the relay, then DCUtR made the connection direct
        assert report["path"] == "hole-punched" and report["path_after"] == "hole-punched", report
    finally:
        _stop(net)


def test_a_relay_that_dies_mid_rental(lab: NatLab, workdir: Path) -> None:
    """Three relays, the provider holds two; the one the renter's circuit uses dies mid-job.

    The renter's job fails clearly or recovers (through the other reserved relay); either way
    the escrow is settled once; the provider reserves on the third relay, and a new renter rents
    through it."""
    net = start_network(lab, workdir, bootstraps=3)
    try:
        ids = {n: p.addr.rsplit("/p2p/", 1)[1] for n, p in net.procs.items() if n.startswith("bootstrap")}
        for n in ("bootstrap", "bootstrap2"):
            _wait_log(net, "provider", f"reserved a slot on relay {ids[n][:16]}")
        assert f"reserved a slot on relay {ids['bootstrap3'][:16]}" not in (
            workdir / "provider.log").read_text()

        # the renter knows only bootstrap2: its circuit to the provider runs there
        renter = start_renter(lab, net, lab.public_ns, "--tick", "2", bootstraps=["bootstrap2"])
        _wait_log(net, "provider", ": start paid")  # the job is running and billed
        net.procs["bootstrap2"].popen.kill()
        net.procs["bootstrap2"].popen.wait()
        report = report_of(renter)
        print(f"relay died mid-rental: {report['state']}, {report.get('error', 'recovered')}")

        esc = report["escrow"]
        assert esc["status"] == "closed"
        assert esc["paid"] + esc["fee"] + esc["refunded"] == esc["deposited"]
        assert esc["paid"] + esc["fee"] == esc["minutes"] * esc["rate"]
        if report["state"] == "finished":  # recovered over the other relay
            _assert_paid_rental(report)
        else:
            assert report["state"] == "failed" and "lost" in report["error"], report

        _wait_log(net, "provider", f"lost the reservation on relay {ids['bootstrap2'][:16]}")
        _wait_log(net, "provider", f"reserved a slot on relay {ids['bootstrap3'][:16]}")
        again = run_renter(lab, net, lab.public_ns, bootstraps=["bootstrap3"])
        _assert_paid_rental(again)
        assert again["path"] == "relay"
        vias = {a.split("/p2p-circuit")[0].rsplit("/p2p/", 1)[1] for a in again["offer_addrs"]}
        assert vias == {ids["bootstrap"], ids["bootstrap3"]}
    finally:
        _stop(net)



def test_the_demo_with_its_provider_behind_nat(lab: NatLab) -> None:
    # its own lab (namespaces are cheap); ``lab`` only decides skip-or-fail like the others
    done = subprocess.run([sys.executable, "-m", "dgpu.client.main", "demo", "--provider-behind-nat"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"path": "relay"' in done.stdout and '"state": "finished"' in done.stdout
