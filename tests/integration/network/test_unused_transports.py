"""In a process that skips py-libp2p's unused subsystems (as every ``dgpu node`` does), a peer
known at QUIC or WebSocket addresses (a stranger can advertise any) is a clean dial error, and the
same peer over TCP is reached: no placeholder of ``dgpu.node.adapters.p2p_unused`` is touched."""

from __future__ import annotations

import subprocess
import sys

_DIALS = """
from dgpu.node.adapters.p2p_unused import skip_unused_libp2p_subsystems
assert skip_unused_libp2p_subsystems() is not None
import secrets, trio
from dgpu.node.adapters.p2p import P2PConfig, open_node
from dgpu.node.errors import DialError
from dgpu.protocol.keys import SigningKey

async def main():
    key = lambda: SigningKey(secrets.token_bytes(32))
    async with open_node(key(), P2PConfig(gossip=None)) as a, open_node(key(), P2PConfig(gossip=None)) as b:
        port = b.multiaddr.split("/tcp/")[1].split("/")[0]
        for transport in ("quic-v1", "ws", "tls/ws"):
            base = f"udp/{port}" if transport == "quic-v1" else f"tcp/{port}"
            try:
                with trio.fail_after(60):
                    await a.connect(f"/ip4/127.0.0.1/{base}/{transport}/p2p/{b.peer_id}")
                print("CONNECTED", transport)
            except DialError:
                print("REFUSED", transport)
        with trio.fail_after(60):
            print("TCP", await a.connect(b.multiaddr) == b.peer_id)

trio.run(main)
"""


def test_quic_and_websocket_addresses_are_dial_errors_and_tcp_still_connects() -> None:
    out = subprocess.run([sys.executable, "-c", _DIALS], check=False, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.split(" ")[0] in ("CONNECTED", "REFUSED", "TCP")]
    assert lines == ["REFUSED quic-v1", "REFUSED ws", "REFUSED tls/ws", "TCP True"], out.stdout + out.stderr[-3000:]
    assert "SubsystemNotLoaded" not in out.stderr
