"""Node logging: libp2p's records go through our handler and its benign-noise filter, even
though nodes import libp2p after logging is configured (its import resets its logger)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# a fresh interpreter: logging and libp2p's import are process-wide, and pytest imported libp2p
_NODE = textwrap.dedent("""
    import logging, os, sys
    import trio
    from dgpu.node import logging as node_logging
    node_logging.configure("INFO", name="t")
    assert "libp2p" not in sys.modules, "the order a node has: logging first, libp2p later"
    from dgpu.node.adapters.p2p import P2PConfig, open_node
    from dgpu.protocol.keys import SigningKey

    async def main() -> None:
        async with open_node(SigningKey(os.urandom(32)), P2PConfig(listen_host="127.0.0.1", listen_port=0)):
            log = logging.getLogger("libp2p.host.basic_host")
            log.error("Failed to open stream to peer X: protocols not supported")  # benign
            log.error("a real libp2p error")
            logging.getLogger("libp2p.transport.tcp.tcp").info("libp2p chatter")

    trio.run(main)
""")


def test_libp2p_records_imported_after_configure_are_formatted_and_filtered() -> None:
    out = subprocess.run([sys.executable, "-c", _NODE], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    # before: both came out bare (no time, no level, unfiltered) through logging.lastResort
    assert "Failed to open stream" not in out.stderr and "chatter" not in out.stderr, out.stderr
    [line] = [line for line in out.stderr.splitlines() if "a real libp2p error" in line]
    assert line.split(" ", 1)[1] == "t ERROR libp2p.host.basic_host: a real libp2p error", line
