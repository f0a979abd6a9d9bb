"""Idle RSS: a running provider and renter (the real ``dgpu node`` start path, joined to a
bootstrap node and its development ledger) have loaded no library they do not use: no web
server (no ``--api-port``), no Docker SDK (script executor), no Solana client (dev ledger),
no S3 client, no JWT, and none of py-libp2p's subsystems a node does not run (QUIC, WebSocket,
mDNS, AutoTLS: ``dgpu.node.adapters.p2p_unused``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from .conftest import START_TIMEOUT_S, Network, fresh_network

HEAVY = ["fastapi", "starlette", "uvicorn", "jwt", "trio_asyncio", "docker", "solana", "solders", "anchorpy",
         "construct", "boto3", "botocore",
         # what py-libp2p would load for its QUIC, WebSocket, mDNS and AutoTLS subsystems
         "aioquic", "OpenSSL", "service_identity", "zeroconf", "requests", "websockets", "trio_websocket",
         "libp2p.security.tls.autotls", "libp2p.transport.websocket"]

#: runs ``dgpu`` in this process; once the node is listening (its addr file) and has written its
#: status, prints the heavy packages loaded (skipped modules, which have no file, do not count) and exits
_PROBE = f"""
import json, os, sys, threading, time
from collections.abc import Iterator
from pathlib import Path
addr, status = Path(sys.argv[1]), Path(sys.argv[2])
def watch():
    deadline = time.monotonic() + {START_TIMEOUT_S * 2}
    while not (addr.exists() and status.exists()):
        if time.monotonic() > deadline:
            print("NOT STARTED", flush=True)
            os._exit(3)
        time.sleep(0.1)
    loaded = [name for name, module in list(sys.modules.items()) if getattr(module, "__file__", None)]
    heavy = {{h for h in {HEAVY!r} for name in loaded if name == h or name.startswith(h + ".")}}
    print("HEAVY=" + ",".join(sorted(heavy)), flush=True)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from dgpu.client.main import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    with fresh_network("dgpu-imports-") as network:
        yield network


def _heavy_loaded(net: Network, name: str, args: list[str]) -> str:
    addr, status = net.workdir / f"{name}.addr", net.workdir / f"{name}.status"
    cmd = [sys.executable, "-c", _PROBE, str(addr), str(status), "node", *args, "--bootstrap", net.bootstrap,
           "--ledger-url", net.ledger_url, "--data-dir", str(net.workdir / name), "--addr-file", str(addr),
           "--status-file", str(status), "--log-level", "WARNING"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=START_TIMEOUT_S * 3,
                            stdin=subprocess.DEVNULL)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("HEAVY=")]
    assert lines, f"{name} did not start:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return lines[0].removeprefix("HEAVY=")


def test_a_running_provider_loads_no_unused_heavy_library(net: Network) -> None:
    assert _heavy_loaded(net, "provider", ["--role", "provider", "--simulated-gpu", "RTX 4090:24576:1",
                                           "--price", "100", "--accept-simulated"]) == ""


def test_a_running_renter_loads_no_unused_heavy_library(net: Network) -> None:
    assert _heavy_loaded(net, "renter", ["--role", "renter", "--accept-simulated"]) == ""
