"""A NAT laboratory from Linux network namespaces: a public segment and homes behind NAT routers.

Used by the NAT integration tests, ``bench/nat.py`` and the demo's ``--provider-behind-nat``.
Needs root and ``ip`` / ``iptables`` (:func:`unavailable` says why not). Everything it creates
is named ``<tag>-...`` with a fresh random tag, uses only 10.77.0.0/16 inside those namespaces,
and :meth:`NatLab.close` (also run when building fails half-way) kills what still runs inside
them and deletes them.

Topology (``homes=2``)::

    public ns: bridge 10.77.0.2/24 (bootstrap nodes, a public renter)
      |-- router 1: wan 10.77.0.11 | lan 10.77.1.1  --  home 1: 10.77.1.2
      `-- router 2: wan 10.77.0.12 | lan 10.77.2.1  --  home 2: 10.77.2.2

Each router masquerades its home behind its wan address and, like a home router, drops new
connections from the wan side (no port forwarding): a home is reachable from outside only
through connections it opened. The public namespace has no route into any home.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["Home", "NatLab", "nat_lab", "unavailable"]

PUBLIC_IP = "10.77.0.2"


def unavailable() -> str | None:
    """Why namespaces cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 iptables)"
    probe = f"dgpu-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@dataclass(frozen=True, slots=True)
class Home:
    ns: str
    router_ns: str
    #: the home host's address (private: nothing outside routes to it)
    ip: str
    #: the router's public address, the one the home's connections appear to come from
    wan_ip: str


@dataclass
class NatLab:
    tag: str
    public_ns: str
    homes: list[Home] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    @property
    def public_ip(self) -> str:
        return PUBLIC_IP

    def namespaces(self) -> list[str]:
        return list(self._made)

    def cmd(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        """Kill what still runs in our namespaces, then delete them (idempotent)."""
        for ns in reversed(self._made):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._made.clear()

    # ---- building ----
    def _ns(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def _build(self, homes: int) -> None:
        pub = self.public_ns
        _run("ip", "-n", pub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", pub, "addr", "add", f"{PUBLIC_IP}/24", "dev", "br0")
        _run("ip", "-n", pub, "link", "set", "br0", "up")
        for i in range(1, homes + 1):
            rtr, home = self._ns(f"r{i}"), self._ns(f"h{i}")
            wan_ip, lan_net = f"10.77.0.{10 + i}", f"10.77.{i}"
            # router wan <-> a port on the public bridge
            _run("ip", "link", "add", f"{self.tag}w{i}", "netns", rtr, "type", "veth",
                 "peer", "name", f"{self.tag}p{i}", "netns", pub)
            _run("ip", "-n", rtr, "link", "set", f"{self.tag}w{i}", "name", "wan")
            _run("ip", "-n", pub, "link", "set", f"{self.tag}p{i}", "master", "br0", "up")
            _run("ip", "-n", rtr, "addr", "add", f"{wan_ip}/24", "dev", "wan")
            _run("ip", "-n", rtr, "link", "set", "wan", "up")
            # router lan <-> home
            _run("ip", "link", "add", f"{self.tag}l{i}", "netns", rtr, "type", "veth",
                 "peer", "name", f"{self.tag}h{i}", "netns", home)
            _run("ip", "-n", rtr, "link", "set", f"{self.tag}l{i}", "name", "lan")
            _run("ip", "-n", home, "link", "set", f"{self.tag}h{i}", "name", "eth0")
            _run("ip", "-n", rtr, "addr", "add", f"{lan_net}.1/24", "dev", "lan")
            _run("ip", "-n", home, "addr", "add", f"{lan_net}.2/24", "dev", "eth0")
            _run("ip", "-n", rtr, "link", "set", "lan", "up")
            _run("ip", "-n", home, "link", "set", "eth0", "up")
            _run("ip", "-n", home, "route", "add", "default", "via", f"{lan_net}.1")
            _run("ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            ipt = ["ip", "netns", "exec", rtr, "iptables"]
            _run(*ipt, "-t", "nat", "-A", "POSTROUTING", "-s", f"{lan_net}.0/24", "-o", "wan",
                 "-j", "MASQUERADE")
            # a home router: nothing new comes in from the wan side, to it or through it
            for chain in ("INPUT", "FORWARD"):
                _run(*ipt, "-A", chain, "-i", "wan", "-m", "conntrack", "--ctstate", "NEW",
                     "-j", "DROP")
            self.homes.append(Home(home, rtr, f"{lan_net}.2", wan_ip))


@contextlib.contextmanager
def nat_lab(homes: int = 1) -> Iterator[NatLab]:
    """Build the topology; always delete it (and kill what runs in it) on the way out."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot build network namespaces: {reason}")
    tag = f"dg{secrets.token_hex(3)}"
    lab = NatLab(tag, f"{tag}-pub")
    try:
        lab._made.append(lab.public_ns)
        _run("ip", "netns", "add", lab.public_ns)
        _run("ip", "-n", lab.public_ns, "link", "set", "lo", "up")
        lab._build(homes)
        yield lab
    finally:
        lab.close()
