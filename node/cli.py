"""``dgpu node``: parse the node's flags, build its configuration once, hand it to the app.

The top-level ``dgpu`` command (``dgpu.client.main``) registers this subcommand with
:func:`add_node_command` and runs it with :func:`run_node_command`; the node itself knows
nothing of the commands stacked above it (bootstrap, demo, renter commands).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import trio

from dgpu.node.errors import ConfigError
from dgpu.node.layered_settings import make_layered

if TYPE_CHECKING:
    from dgpu.node.app import NodeRuntime
    from dgpu.node.config import NodeConfig

__all__ = ["RentOnce", "add_common_options", "add_node_command", "node_config", "run_node_command",
           "settings_epilog", "until_signal"]


class RentOnce(Protocol):
    """The renter's one-shot job of ``--rent-script`` (the demo's renter): returns its summary."""

    def __call__(self, rt: NodeRuntime, *, script: str, min_vram_mib: int, expect_offers: int,
                 out: IO[str], ledger_url: str | None, minutes: int) -> Awaitable[dict[str, Any]]: ...


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Identity, listen address, metrics and logging: shared by ``dgpu node`` and ``dgpu bootstrap``."""
    p.add_argument("--config", type=Path, default=None, metavar="PATH",
                   help="TOML file whose [node] or [bootstrap] table sets any flag by its dest name (default "
                        "$DGPU_CONFIG, else ~/.config/dgpu/config.toml if it exists)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="identity and state (identity.json is created on first run, mode 0600); default "
                        "$DGPU_DATA_DIR, else $XDG_DATA_HOME/dgpu/ROLE (~/.local/share/dgpu/ROLE); one process "
                        "per data dir")
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=int, default=0, help="listen port (0: the kernel picks)")
    p.add_argument("--addr-file", type=Path, default=None,
                   help="write the full multiaddr here once listening")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus /metrics on this port, with or without the local API (default off; "
                        "0: the kernel picks)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="the /metrics server's listen address")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   type=str.upper, help="INFO: what an operator must know; DEBUG adds libp2p's and HTTP's chatter")


def add_node_command(sub: Any) -> argparse.ArgumentParser:
    """Register ``dgpu node``; its flags can also come from ``DGPU_*`` and ``[node]`` (see
    :func:`dgpu.node.layered_settings.resolve`, which its caller runs after parsing)."""
    n: argparse.ArgumentParser = sub.add_parser(
        "node", help="run a provider or renter node",
        description="Run a provider (offers its GPUs, runs renters' jobs, claims its earnings) or a renter node "
                    "(finds offers, funds escrows, serves the local API the renter commands use) until Ctrl-C.",
        epilog=settings_epilog("node", 'metrics_port = 9400, allow_image = ["busybox"]'))
    add_common_options(n)
    n.add_argument("--role", choices=["provider", "renter"], required=True,
                   help="provider: rent out GPUs; renter: rent them")
    n.add_argument("--bootstrap", action="append", required=True, metavar="MULTIADDR",
                   help="bootstrap node multiaddr with /p2p/ID (repeatable)")
    n.add_argument("--simulated-gpu", action="append", default=[], metavar="MODEL:VRAM[:N]",
                   help="provider: a SIMULATED GPU (development networks; marked in offers)")
    n.add_argument("--gpu", action="append", default=[], metavar="UUID|INDEX",
                   help="provider: offer only this GPU of those NVML reports (repeatable; default: all)")
    n.add_argument("--price", type=int, default=None,
                   help="provider: base units per GPU-minute, overriding the pricing engine's market price")
    n.add_argument("--price-multiplier-bounds", default="0.5:2.0", metavar="LOW:HIGH",
                   help="provider: keep the demand/supply multiplier in this band (inside 0.5:2.0)")
    n.add_argument("--region", default="local", help="provider: the region named in its offers")
    n.add_argument("--max-jobs", type=int, default=None, help="provider: concurrent jobs (default: one per GPU)")
    n.add_argument("--allow-image", action="append", default=[], metavar="IMAGE",
                   help="provider: a Docker image renters may run (repeatable; needs --executor docker)")
    n.add_argument("--executor", action="append", default=[], choices=["script", "docker"],
                   help="provider: how jobs run (repeatable; none given: script)")
    n.add_argument("--allow-forward", action="store_true",
                   help="provider: renters may forward TCP ports into their running jobs (said in offers)")
    n.add_argument("--allow-shell", action="store_true",
                   help="provider: renters may open a shell in their running jobs (said in offers)")
    n.add_argument("--access-limits", type=_access_limits, default=(16, 16 * 1024 * 1024, 600.0),
                   metavar="CONNS:BYTES_PER_S:IDLE_S",
                   help="provider: per rental, forwarded connections and shells at once, bytes per second "
                        "each way, seconds idle before one is closed (default 16:16777216:600)")
    n.add_argument("--offer-ttl", type=int, default=300, help="provider: seconds an offer stays valid")
    n.add_argument("--status-file", type=Path, default=None,
                   help="write a JSON status here every 0.5 s (tests, benchmarks)")
    n.add_argument("--accept-simulated", action="store_true",
                   help="accept offers of simulated GPUs (development networks)")
    n.add_argument("--rent-script", default=None,
                   help="renter: run this script once on the cheapest match, then exit")
    n.add_argument("--rent-min-vram", type=int, default=0, metavar="MIB",
                   help="renter (--rent-script): least VRAM per GPU")
    n.add_argument("--rent-expect-offers", type=int, default=1,
                   help="renter (--rent-script): offers to wait for before choosing")
    n.add_argument("--rent-minutes", type=int, default=5, help="renter (--rent-script): minutes to pay for")
    n.add_argument("--ledger-url", default=None,
                   help="development ledger (a bootstrap node's HTTP URL): providers verify and claim escrows, "
                        "renters fund them")
    # the Solana settings default to None: NodeConfig holds their defaults and checks them together
    n.add_argument("--ledger", choices=["dev", "solana"], default=None,
                   help="escrow ledger: the development ledger (--ledger-url) or the Solana program "
                        "(default dev)")
    n.add_argument("--solana-rpc", default=None,
                   help="--ledger solana: the cluster's JSON-RPC URL")
    n.add_argument("--program-id", default=None,
                   help="--ledger solana: the dgpu_escrow program id")
    n.add_argument("--mint", default=None,
                   help="--ledger solana: the mint the program must pin (checked)")
    n.add_argument("--commitment", choices=["processed", "confirmed", "finalized"], default=None,
                   help="--ledger solana: the commitment transactions are confirmed at (default "
                        "confirmed)")
    n.add_argument("--compute-unit-price", type=int, default=None,
                   help="micro-lamports per CU (priority fee)")
    n.add_argument("--compute-unit-limit", type=int, default=None,
                   help="--ledger solana: compute units per transaction (default "
                        "the cluster's)")
    n.add_argument("--claim-interval", type=int, default=600, help="provider: ledger seconds between claims")
    n.add_argument("--billing-grace", type=int, default=60,
                   help="provider: ledger seconds an exhausted rental keeps running, waiting for a top-up")
    n.add_argument("--billing-poll", type=float, default=5.0, help="seconds between looks at the escrow")
    n.add_argument("--settle-retry-max", type=float, default=30.0,
                   help="most seconds between two tries of a settlement that did not land (ledger down)")
    n.add_argument("--meter-interval", type=float, default=None,
                   help="provider: wall seconds per metered minute (default: the ledger's minute)")
    n.add_argument("--start-window", type=int, default=120,
                   help="provider: seconds a renter has to submit an agreed job (then its escrow is refundable)")
    n.add_argument("--api-port", type=int, default=None,
                   help="serve the local HTTP API on this port (8700 is usual; needs --bootstrap-url)")
    n.add_argument("--api-host", default="127.0.0.1", help="the local HTTP API's listen address")
    n.add_argument("--reachability", choices=["auto", "public", "private"], default="auto",
                   help="provider: auto-detect (dial-back by bootstrap nodes) or force; "
                        "not public = reserve relay slots on the bootstrap nodes")
    n.add_argument("--join-tries", type=int, default=8, metavar="N",
                   help="rounds of dialling the bootstrap nodes (backoff 0.25 s doubling to 10 s) before "
                        "giving up with 'no bootstrap node reachable'")
    n.add_argument("--bootstrap-url", default=None, help="HTTP URL of a bootstrap node (login, storage)")
    n.add_argument("--api-admin", action="append", default=[], metavar="WALLET",
                   help="another wallet allowed to use the API")
    n.add_argument("--input-root", action="append", default=[], metavar="DIR",
                   help="API jobs may ship files only from under this folder (repeatable; default: the "
                        "folder the node starts in)")
    n.add_argument("--api-host-name", action="append", default=[], metavar="NAME",
                   help="a Host name the API answers besides loopback names (repeatable)")
    n.add_argument("--development", action="store_true",
                   help="development network: simulated GPUs and the faucet through the API")
    make_layered(n)
    return n


def settings_epilog(table: str, example: str) -> str:
    """The ``--help`` epilog of a daemon command: where else its flags can be set."""
    return textwrap.fill(
        f"Every flag can also be set by DGPU_<NAME> (its name in upper case, _ for -: DGPU_METRICS_PORT; "
        f"lists comma-separated; switches true or false) or by <name> in the [{table}] table of the config "
        f"file ({example}). A flag beats its variable, which beats "
        f"the file.", width=88)


def _leaves(group: BaseExceptionGroup[ConfigError]) -> list[ConfigError]:
    out: list[ConfigError] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def until_signal(body: Callable[[], Awaitable[None]], *, stopping: trio.Event | None = None,
                       grace_s: float = 5.0) -> None:
    """Run ``body``; SIGTERM/SIGINT cancel it so every service shuts down cleanly. With
    ``stopping``, the signal first sets it and gives ``body`` up to ``grace_s`` to return by
    itself (a provider withdraws its offer while its connections are still up)."""
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    if stopping is not None:
                        stopping.set()
                        await trio.sleep(grace_s)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        await body()
        nursery.cancel_scope.cancel()


def _access_limits(text: str) -> tuple[int, int, float]:
    try:
        conns, rate, idle = text.split(":")
        return int(conns), int(rate), float(idle)
    except ValueError:
        raise argparse.ArgumentTypeError("CONNS:BYTES_PER_S:IDLE_S, e.g. 16:16777216:600") from None


_SOLANA = ("ledger", "solana_rpc", "program_id", "mint", "commitment", "compute_unit_price", "compute_unit_limit")


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The node's configuration from its settings (flags, ``DGPU_*`` and the file, resolved).

    Raises pydantic's ValidationError on a bad setting, PricingError on bad multiplier bounds."""
    from dgpu.node.config import NodeConfig, parse_gpu
    from dgpu.node.data_dir import resolve_data_dir
    from dgpu.protocol.messages import Executor
    from dgpu.protocol.pricing import MultiplierBounds

    bounds = MultiplierBounds.parse(args.price_multiplier_bounds)
    # unset Solana settings are left out, so NodeConfig's defaults apply
    solana = {k: getattr(args, k) for k in _SOLANA if getattr(args, k) is not None}
    return NodeConfig(
        role=args.role, bootstrap=tuple(args.bootstrap), data_dir=resolve_data_dir(args.data_dir, args.role),
        listen_host=args.host, listen_port=args.port, addr_file=args.addr_file,
        log_level=args.log_level, accept_simulated=args.accept_simulated,
        gpus=tuple(parse_gpu(g, simulated=True) for g in args.simulated_gpu),
        gpu_select=tuple(args.gpu), price_per_gpu_minute=args.price,
        price_multiplier_low=bounds.low, price_multiplier_high=bounds.high, region=args.region,
        executors=tuple(Executor(e) for e in args.executor) or (Executor.SCRIPT,),
        allowed_images=tuple(args.allow_image), max_concurrent_jobs=args.max_jobs,
        offer_ttl_s=args.offer_ttl, allow_forward=args.allow_forward, allow_shell=args.allow_shell,
        access_max_connections=args.access_limits[0], access_bytes_per_second=args.access_limits[1],
        access_idle_timeout_s=args.access_limits[2],
        status_file=args.status_file, ledger_url=args.ledger_url, **solana,
        metrics_host=args.metrics_host, metrics_port=args.metrics_port,
        claim_interval_s=args.claim_interval,
        billing_grace_s=args.billing_grace, billing_poll_s=args.billing_poll,
        settle_retry_max_s=args.settle_retry_max,
        meter_interval_s=args.meter_interval, start_window_s=args.start_window,
        reachability=args.reachability, join_tries=args.join_tries,
    )


def run_node_command(args: argparse.Namespace, *, rent_once: RentOnce | None = None) -> int:
    """Run ``dgpu node`` until a signal (or, with ``--rent-script``, until ``rent_once`` returns)."""
    from pydantic import ValidationError

    from dgpu.node.adapters.data_lock import hold_data_dir
    from dgpu.node.app import run_node
    from dgpu.protocol.errors import PricingError

    try:
        config = node_config(args)
        api = None
        if args.api_port is not None:
            from dgpu.node.services.api import ApiSettings

            if args.bootstrap_url is None:
                print("dgpu node: --api-port needs --bootstrap-url (login and storage)", file=sys.stderr)
                return 2
            api = ApiSettings(host=args.api_host, port=args.api_port, bootstrap_url=args.bootstrap_url,
                              ledger_url=args.ledger_url, development=args.development,
                              admin_wallets=frozenset(args.api_admin),
                              **({"input_roots": tuple(args.input_root)} if args.input_root else {}),
                              allowed_hosts=tuple(args.api_host_name))
    except PricingError as exc:
        print(f"dgpu node: --price-multiplier-bounds: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"dgpu node: invalid configuration: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    main_fn: Callable[[NodeRuntime], Awaitable[None]] | None = None
    if args.rent_script is not None:
        if rent_once is None:
            print("dgpu node: --rent-script is not available here", file=sys.stderr)
            return 2
        once = rent_once

        async def rent(rt: NodeRuntime) -> None:
            result.update(await once(rt, script=args.rent_script,
                                     min_vram_mib=args.rent_min_vram,
                                     expect_offers=args.rent_expect_offers,
                                     out=sys.stdout, ledger_url=args.ledger_url,
                                     minutes=args.rent_minutes))

        main_fn = rent

    async def body() -> None:
        await run_node(config, main=main_fn, api=api, stopping=stopping)

    async def run() -> None:
        await until_signal(body, stopping=stopping)

    stopping = trio.Event()
    refused: list[str] = []
    try:
        with hold_data_dir(config.data_dir):
            trio.run(run)
    except* ConfigError as group:  # a provider that cannot offer what it was asked to (no GPU, no runtime)
        refused.extend(str(exc) for exc in _leaves(group))
    if refused:
        print(f"dgpu node: {refused[0]}", file=sys.stderr)
        return 2
    if args.rent_script is not None:
        print("SUMMARY " + json.dumps(result), flush=True)
        return 0 if result.get("state") == "finished" else 1
    return 0
