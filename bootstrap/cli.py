"""``dgpu bootstrap``: parse the bootstrap node's flags and run its services until a signal.

Registered on the top-level ``dgpu`` command by ``dgpu.client.main``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

from dgpu.node.cli import add_common_options, settings_epilog, until_signal
from dgpu.node.layered_settings import make_layered

__all__ = ["add_bootstrap_command", "run_bootstrap_command"]


def add_bootstrap_command(sub: Any) -> argparse.ArgumentParser:
    b: argparse.ArgumentParser = sub.add_parser(
        "bootstrap", help="run a bootstrap node (DHT server + rendezvous, login, pinning, development ledger)",
        description="Run a bootstrap node: peers find each other through it (DHT server and rendezvous), log in "
                    "(wallet-signed challenges, JWTs), pin files, and on development networks use its ledger "
                    "and faucet.",
        epilog=settings_epilog("bootstrap", "metrics_port = 9400, no_ledger = true"))
    add_common_options(b)
    b.add_argument("--http-host", default="127.0.0.1", help="HTTP listen address (login, pinning, ledger)")
    b.add_argument("--http-port", type=int, default=8600, help="HTTP port (0: the kernel picks)")
    b.add_argument("--http-url-file", type=Path, default=None, help="write the HTTP base URL here once listening")
    b.add_argument("--no-ledger", action="store_true", help="do not serve the development ledger")
    b.add_argument("--ledger-clock-speed", type=int, default=1,
                   help="development ledger: its clock runs this many times faster (60: one wall second "
                        "bills one minute, so short jobs show a cost)")
    b.add_argument("--ledger-test-mode", action="store_true",
                   help="development ledger: allow setting its clock over HTTP (tests only)")
    make_layered(b)
    return b


def run_bootstrap_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from dgpu.bootstrap.service import LedgerSettings, run_bootstrap_services
    from dgpu.node.adapters.data_lock import hold_data_dir
    from dgpu.node.config import BootstrapConfig
    from dgpu.node.data_dir import resolve_data_dir

    try:
        config = BootstrapConfig(data_dir=resolve_data_dir(args.data_dir, "bootstrap"), listen_host=args.host,
                                 listen_port=args.port, addr_file=args.addr_file, log_level=args.log_level,
                                 metrics_host=args.metrics_host, metrics_port=args.metrics_port)
    except ValidationError as exc:
        print(f"dgpu bootstrap: invalid configuration: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    ledger = LedgerSettings(enabled=not args.no_ledger, clock_speed=args.ledger_clock_speed,
                            test_mode=args.ledger_test_mode)

    async def body() -> None:
        await run_bootstrap_services(config, http_host=args.http_host, http_port=args.http_port, ledger=ledger,
                                     url_file=args.http_url_file)

    with hold_data_dir(config.data_dir):
        trio.run(until_signal, body)
    return 0
