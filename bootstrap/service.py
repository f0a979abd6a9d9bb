"""``dgpu bootstrap``: the libp2p discovery host and the HTTP services in one trio process.

The HTTP app (``http_app.create_app``) serves wallet-signed login, storage pinning and — unless
disabled — the development ledger (``/api/v1/ledger``, tokens of no real value), all signed
with the same identity as the libp2p host, so the bootstrap node's peer id, its JWT issuer key
and its wallet are one key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dgpu.bootstrap.config import BootstrapHttpConfig
from dgpu.bootstrap.http_app import create_app
from dgpu.bootstrap.p2p import run_bootstrap
from dgpu.contracts.devledger.model import DevLedgerConfig
from dgpu.contracts.devledger.server import ledger_router
from dgpu.node.adapters.files import write_addr_file
from dgpu.node.adapters.http_server import serve_http
from dgpu.node.adapters.keystore import load_or_create
from dgpu.node.adapters.metrics_http import serve_metrics
from dgpu.node.adapters.p2p_metrics import P2PCollector
from dgpu.node.config import BootstrapConfig

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["BootstrapEndpoints", "LedgerSettings", "run_bootstrap_services"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """The development ledger this bootstrap node serves (no real value)."""

    enabled: bool = True
    #: the ledger clock runs this many times faster than the wall clock (demos only)
    clock_speed: int = 1
    #: allows POST /api/v1/ledger/admin/time (tests only)
    test_mode: bool = False
    fee_bps: int = 500


#: served on loopback, every node of a local network calls from 127.0.0.1, so one address's bucket
#: must let 100 nodes start at once (each reads the ledger a few times, then polls its escrows);
#: only local processes can reach such a server, so the per-address limit protects little there
LOOPBACK_IP_LIMITS: dict[str, Any] = {"ip_rate_per_s": 500.0, "ip_burst": 2_000}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True, slots=True)
class BootstrapEndpoints:
    multiaddr: str
    http_url: str


async def run_bootstrap_services(
    config: BootstrapConfig,
    *,
    http_host: str = "127.0.0.1",
    http_port: int = 8600,
    ledger: LedgerSettings = LedgerSettings(),
    url_file: Path | None = None,
    task_status: TaskStatus[BootstrapEndpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the discovery host and the HTTP services until cancelled."""
    key = load_or_create(config.key_file, passphrase=os.environ.get(config.passphrase_env))
    limits = LOOPBACK_IP_LIMITS if _is_loopback(http_host) else {}
    http_config = BootstrapHttpConfig(data_dir=config.data_dir / "http", key_path=config.key_file, **limits)
    routers = []
    if ledger.enabled:
        routers.append(ledger_router(DevLedgerConfig(
            db_path=config.data_dir / "ledger.sqlite3", clock_speed=ledger.clock_speed,
            test_mode=ledger.test_mode, fee_bps=ledger.fee_bps)))
    app = create_app(http_config, extra_routers=routers, node_key=Ed25519PrivateKey.from_private_bytes(key.seed))
    registry = app.state.bootstrap.metrics.registry
    async with trio.open_nursery() as nursery:
        node = await nursery.start(run_bootstrap, config)
        registry.register(P2PCollector(node))  # connections, streams, refusals, relay reservations
        if config.metrics_port is not None:  # the same registry the HTTP app's /metrics serves
            metrics_port = await nursery.start(serve_metrics, registry, config.metrics_host, config.metrics_port)
            log.info("metrics on http://%s:%d/metrics", config.metrics_host, metrics_port)
        port = await nursery.start(partial(serve_http, app, http_host, http_port, limits=http_config.connections))
        url = f"http://{http_host}:{port}"
        if url_file is not None:
            write_addr_file(url_file, url)
        log.info("bootstrap HTTP on %s (ledger: %s)", url,
                 f"development, clock x{ledger.clock_speed}" if ledger.enabled else "off")
        print(f"http {url}", flush=True)
        task_status.started(BootstrapEndpoints(node.multiaddr, url))
