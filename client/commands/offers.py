"""``dgpu offers``: the node's offer book, cheapest first."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from dgpu.client.api_client import Api, settings_of
from dgpu.client.display import offer_table
from dgpu.node.services.api.schema import MarketOut

__all__ = ["cmd_offers"]


def cmd_offers(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    api = Api(settings_of(args))
    params: dict[str, Any] = {"limit": args.limit, "sort": args.sort, "gpu_count": args.count,
                              "min_vram_mib": args.min_vram, "include_simulated": args.include_simulated}
    for name in ("gpu_model", "region", "max_price", "executor"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    market = api.get(MarketOut, "GET", "/api/v1/billing/marketplace", params=params)
    decimals = api.decimals()
    api.close()
    if args.json:
        json.dump({"decimals": decimals, **market.model_dump(mode="json")}, out, indent=2)
        print(file=out)
        return 0
    offer_table(market.offers, decimals, out)
    print(f"{len(market.offers)} of {market.total} matching offer(s)", file=out)
    if market.hidden_simulated:
        print(f"{market.hidden_simulated} offer(s) of simulated GPUs hidden; `dgpu offers --include-simulated` "
              "shows them", file=out)
    return 0
