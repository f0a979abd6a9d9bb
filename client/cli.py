"""The renter commands of ``dgpu``: offers, rent, jobs, wallet, login — clients of the node's API.

``add_commands(subparsers)`` registers them on the ``dgpu`` parser (``client/main.py``); each sets
``handler`` (``args.handler(args) -> int``). ``python -m dgpu.client.cli`` runs them alone. The
commands live in ``client/commands/`` (one module per resource), the API client in
``client/api_client.py``, the display helpers in ``client/display.py``.

Every command talks to the node's local HTTP API (``api_url``) with the token ``dgpu login``
stored in the data dir; see ``client/settings.py`` for the configuration scheme. Amounts are
integers of the mint's base unit on the wire; they are shown as dGPU with the mint's decimals
(read from the ledger through the node), using ``Decimal``, never floats.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from dgpu.client.settings import HELP

__all__ = ["add_commands", "main"]


# -- parser --------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (file < DGPU_* environment < flags)")
    g.add_argument("--config", default=None, help="TOML config file (default ~/.config/dgpu/config.toml)")
    g.add_argument("--api-url", default=None, help="the node's local API (default http://127.0.0.1:8700)")
    g.add_argument("--data-dir", default=None, help="the node's data dir (identity.json, api-token.json)")
    g.add_argument("--timeout", type=float, default=None, help="seconds per API request (default 30)")


def _wrap(command: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``name`` of ``dgpu.client.commands.<command>``, imported when it runs: ``dgpu node``
    parses the same command line and needs no HTTP client, API schema or display (idle RSS)."""

    def handler(args: argparse.Namespace) -> int:
        from dgpu.client.api_client import CliError

        fn: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"dgpu.client.commands.{command}"), name)
        try:
            return fn(args)
        except CliError as exc:
            print(f"dgpu {args.cmd}: {exc}", file=sys.stderr)
            return exc.code

    return handler


def add_commands(subparsers: Any) -> None:
    """Register offers, rent, jobs, wallet and login on ``dgpu``'s subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser("offers", help="list GPU offers (the node's offer book)", formatter_class=fmt,
                              description="List offers the node knows, cheapest first.\n\n" + HELP)
    _common(p)
    p.add_argument("--gpu-model", default=None, help='e.g. "RTX 4090" (case-insensitive)')
    p.add_argument("--min-vram", type=int, default=0, metavar="MIB", help="least VRAM per GPU")
    p.add_argument("--count", type=int, default=1, help="GPUs of one kind")
    p.add_argument("--region", default=None, help="only offers from this region")
    p.add_argument("--max-price", type=int, default=None, metavar="UNITS",
                   help="hide offers dearer than this many base units per GPU-minute")
    p.add_argument("--executor", choices=["docker", "script"], default=None,
                   help="only providers that run this kind of job")
    p.add_argument("--include-simulated", action="store_true", help="show simulated GPUs (development)")
    p.add_argument("--sort", choices=["price", "-price", "vram", "-vram"], default="price",
                   help="order (a leading - reverses it)")
    p.add_argument("--limit", type=int, default=50, help="show at most this many offers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_wrap("offers", "cmd_offers"))

    p = subparsers.add_parser("rent", help="rent a GPU and run a job, with live logs", formatter_class=fmt,
                              description="Submit a job through the node, stream its logs and a status line "
                                          "(state, minutes, spent). Ctrl-C cancels the job; the escrow is "
                                          "settled and unused minutes come back.\n\n" + HELP)
    _common(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--script", default=None, metavar="FILE", help="a shell script (script executor)")
    what.add_argument("--image", default=None, help="a Docker image (docker executor)")
    p.add_argument("--command", nargs=argparse.REMAINDER, default=None,
                   help="with --image: the command and its arguments (put it last)")
    p.add_argument("--max-minutes", type=int, default=10, help="the deposit covers this many minutes")
    p.add_argument("--max-price", type=int, default=None, metavar="UNITS",
                   help="the most this job may cost per minute, all its GPUs together, in base units "
                        "(1000000 = 1 dGPU); offers above it are passed over")
    p.add_argument("--gpu", default=None, metavar="MODEL[:MIN_VRAM_MIB]",
                   help='the GPU to rent, e.g. "RTX 4090" or "RTX 4090:20000" (any when not given)')
    p.add_argument("--count", type=int, default=1, help="GPUs")
    p.add_argument("--provider", default=None, metavar="WALLET", help="rent from this provider")
    p.add_argument("--input", action="append", default=[], metavar="JOB_PATH=LOCAL_FILE",
                   help="ship a file to the job (read-only under /inputs, or $HOME/inputs for scripts); repeatable")
    p.add_argument("--input-root", action="append", default=[], metavar="DIR",
                   help="--input files must lie under this folder (repeatable; default: the current folder)")
    p.add_argument("--stop-on-disconnect", action="store_true",
                   help="stop the job if the node loses it (by default a batch job runs on until it ends or its "
                        "paid minutes run out, and `dgpu jobs attach ID` follows it again)")
    p.add_argument("--push-result", default=None, metavar="BUCKET/KEY",
                   help="also have the provider push the result archive to this object of your bootstrap "
                        "storage, through a signed upload link (readable there with your node stopped)")
    p.add_argument("--forward", action="append", default=[], metavar="[LOCAL:]PORT",
                   help="reach the job's TCP PORT on 127.0.0.1:LOCAL while it runs (repeatable; the provider "
                        "must allow it)")
    p.add_argument("--interactive", action="store_true",
                   help="run until cancelled (Ctrl-C) or the paid minutes end, not until the command exits")
    p.set_defaults(handler=_wrap("jobs", "cmd_rent"))

    p = subparsers.add_parser("jobs", help="list, show, follow, attach, cancel API jobs or download their results",
                              formatter_class=fmt,
                              description="Jobs submitted through the node's API.\n\n" + HELP)
    _common(p)
    p.add_argument("action", nargs="?", choices=["list", "show", "logs", "attach", "cancel", "result", "shell"],
                   default="list", help="what to do (attach: follow a job again after the node went away, by job "
                                        "or agreement id: the rest of its logs, its result with --out, settlement; "
                                        "shell: a terminal in the running job)")
    p.add_argument("job_id", nargs="?", default=None, help="a job id, or `last` for the newest job")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="result, attach: unpack the job's outputs here (result: default ./result-ID)")
    p.add_argument("--state", default=None, choices=["pending", "running", "finished", "failed", "cancelled",
                                                     "expired"], help="list: only jobs in this state")
    p.add_argument("--limit", type=int, default=50, help="list: at most this many jobs; logs: the last N lines")
    p.add_argument("--follow", "-f", action="store_true", help="logs: follow until the job ends")
    p.add_argument("--json", action="store_true", help="machine-readable output (times as epoch seconds)")
    p.add_argument("shell_cmd", nargs="*", metavar="-- CMD",
                   help="shell: the command to run in the job (default: its /bin/sh)")
    p.set_defaults(handler=_wrap("jobs", "cmd_jobs"))

    p = subparsers.add_parser("wallet", help="the node's wallet: address and balances", formatter_class=fmt,
                              description="Show the node's wallet (its key is the wallet); --faucet mints worthless "
                                          "development tokens (development ledger only). With --solana-rpc the "
                                          "wallet is read on Solana directly (SOL and dGPU balances), and "
                                          "--create-token-account creates its dGPU token account; nothing is "
                                          "created otherwise.\n\n" + HELP)
    _common(p)
    p.add_argument("--faucet", default=None, metavar="AMOUNT", help="dGPU to mint, e.g. 10 or 0.5")
    p.add_argument("--solana-rpc", default=None, metavar="URL", help="read the wallet on Solana (any RPC URL)")
    p.add_argument("--program-id", default=None, help="the dGPU escrow program (with --solana-rpc)")
    p.add_argument("--create-token-account", action="store_true",
                   help="with --solana-rpc: create the wallet's dGPU token account if missing (costs SOL rent)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_wrap("wallet", "cmd_wallet"))

    p = subparsers.add_parser("login", help="get an API token by signing with the node key", formatter_class=fmt,
                              description="Sign the bootstrap node's challenge with the node key (via the "
                                          "node's API) and store the token in the data dir (0600). The key's "
                                          "passphrase, if any, comes from $DGPU_KEY_PASSPHRASE.\n\n" + HELP)
    _common(p)
    p.add_argument("--register", choices=["renter", "provider"], default=None,
                   help="first register the wallet with this role at the bootstrap node")
    p.set_defaults(handler=_wrap("login", "cmd_login"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dgpu", description="dGPU renter commands (clients of the node's API)")
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
