"""The ``dgpu`` command: every subcommand, from the top of the package stack.

``dgpu demo`` (``client/demo.py``), ``dgpu bootstrap`` (``bootstrap/cli.py``), ``dgpu node``
(``node/cli.py``) and the renter commands (``client/cli.py``: offers, rent, jobs, wallet,
login). It only parses and dispatches; each part builds its own configuration once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Mapping
from typing import TypeVar

from dgpu.bootstrap.cli import add_bootstrap_command, run_bootstrap_command
from dgpu.client.cli import add_commands
from dgpu.node.cli import add_node_command, run_node_command
from dgpu.node.layered_settings import SettingsError, resolve

__all__ = ["HelpFormatter", "main", "parse_args"]

_E = TypeVar("_E", bound=BaseException)


def _leaf(exc: BaseException, kinds: tuple[type[_E], ...]) -> _E | None:
    """The first ``kinds`` error inside ``exc`` (trio wraps a task's error in ExceptionGroups)."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, kinds)
            if found is not None:
                return found
    return None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; every flag's help ends with its default."""


def _version() -> str:
    try:
        return importlib.metadata.version("dgpu")
    except importlib.metadata.PackageNotFoundError:  # a source tree without its metadata
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``dgpu`` parser and the daemon commands' parsers (their settings are layered)."""
    ap = argparse.ArgumentParser(prog="dgpu", description="dGPU: peer-to-peer GPU rental",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=f"dgpu {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run the local demo network (bootstrap, 2 providers, renter)",
                       description="A local network on 127.0.0.1: a bootstrap node, two providers with "
                                   "simulated GPUs and a renter that rents the cheapest and runs a paid job.",
                       formatter_class=HelpFormatter)
    d.add_argument("--keep", action="store_true", help="keep the work dir and logs")
    d.add_argument("--log-level", default="WARNING", help="children's log level")
    d.add_argument("--ledger", choices=["dev", "solana"], default="dev",
                   help="solana: pay through the escrow program on the local development endpoint (Rust build)")
    d.add_argument("--provider-behind-nat", action="store_true",
                   help="one provider behind a NAT (network namespaces; needs root), rented through the relay")

    daemons = {"bootstrap": add_bootstrap_command(sub), "node": add_node_command(sub)}
    add_commands(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
    return ap, daemons


def parse_args(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> argparse.Namespace:
    """``dgpu``'s arguments; a daemon's flags not given come from ``env`` (``DGPU_*``), then its
    table of the config file, then their defaults. A bad setting exits 2 like a bad flag."""
    ap, daemons = _build()
    args = ap.parse_args(argv)
    command = daemons.get(args.cmd)
    if command is None:
        return args
    try:
        return resolve(command, args, table=args.cmd, env=env)
    except SettingsError as exc:
        command.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `dgpu jobs logs ID | head`: the reader left; so do we, quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def _http_errors() -> tuple[type[Exception], ...]:
    # the web stack is imported only by what serves HTTP (idle RSS of a node without its API):
    # if it was never loaded, none of its errors can have been raised
    http = sys.modules.get("dgpu.node.adapters.http_server")
    return () if http is None else (http.HttpServerError,)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if hasattr(args, "handler"):  # renter commands (dgpu.client.cli) talk to a running node
        return int(args.handler(args))
    if args.cmd == "demo" and args.provider_behind_nat:
        from dgpu.client.nat_demo import run_demo as run_nat_demo

        return run_nat_demo(log_level=args.log_level, keep=args.keep)
    if args.cmd == "demo" and args.ledger == "solana":
        from dgpu.client.demo_solana import run_solana_demo

        return run_solana_demo(log_level=args.log_level, keep=args.keep)
    if args.cmd == "demo":
        from dgpu.client.demo import run_demo

        return run_demo(keep=args.keep, log_level=args.log_level)

    from dgpu.node.adapters.p2p_unused import skip_unused_libp2p_subsystems

    skip_unused_libp2p_subsystems()  # before py-libp2p's first import: ~15 MB a node never uses
    from dgpu.client.demo import rent_once
    from dgpu.node import logging as node_logging
    from dgpu.node.errors import NodeError

    node_logging.configure(args.log_level, name=args.cmd)
    os.umask(0o077)  # daemons: the state, keys, job folders and logs they write are owner-only
    try:
        if args.cmd == "bootstrap":
            return run_bootstrap_command(args)
        return run_node_command(args, rent_once=rent_once)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        # a node that cannot start or join says why in one line, not in a nested traceback
        kinds: tuple[type[Exception], ...] = (NodeError, *_http_errors())
        known = _leaf(exc, kinds)
        if known is None:
            if _leaf(exc, (KeyboardInterrupt,)) is not None:
                return 130
            raise
        print(f"dgpu {args.cmd}: {known}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
