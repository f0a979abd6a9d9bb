"""Run the bootstrap HTTP app alone in a process: ``python -m dgpu.bootstrap.http_main``.

For benchmarks and multi-process tests; the real entry point is ``dgpu bootstrap`` (node CLI),
which also starts the libp2p host. Prints one JSON line ``{"port": N, "pid": P}`` on stdout
once the server accepts connections.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

import trio

from dgpu.node.adapters.http_server import serve_http

from .config import BootstrapHttpConfig
from .http_app import create_app


async def _main(config: BootstrapHttpConfig, host: str, port: int) -> None:
    app = create_app(config)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_http, app, host, port, limits=config.connections))
        print(json.dumps({"port": bound, "pid": os.getpid()}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--quota-bytes", type=int)
    parser.add_argument("--max-upload-bytes", type=int)
    parser.add_argument("--admin-wallet", action="append", default=[])
    args = parser.parse_args(argv)
    settings: dict[str, object] = {
        "data_dir": args.data_dir,
        "admin_wallets": frozenset(args.admin_wallet),
    }
    if args.quota_bytes is not None:
        settings["quota_bytes"] = args.quota_bytes
    if args.max_upload_bytes is not None:
        settings["max_upload_bytes"] = args.max_upload_bytes
    config = BootstrapHttpConfig.model_validate(settings)
    os.umask(0o077)  # the database, blobs and keys it writes are owner-only
    try:
        trio.run(_main, config, args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
