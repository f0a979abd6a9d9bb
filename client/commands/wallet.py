"""``dgpu wallet``: the node's wallet through its API, or on Solana directly (``--solana-rpc``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Any

from dgpu.client.api_client import Api, ApiCallError, CliError, settings_of
from dgpu.client.display import fmt_amount, parse_amount
from dgpu.node.services.api.schema import DepositOut, WalletOut

__all__ = ["cmd_wallet"]


def cmd_wallet(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    if args.solana_rpc is not None:
        return _solana_wallet(args, out)
    api = Api(settings_of(args))
    try:
        try:
            w = api.get(WalletOut, "GET", "/api/v1/billing/wallet")
        except ApiCallError as exc:
            if exc.api_code == "ledger_error":  # say so rather than show a balance nobody read
                raise CliError(f"the ledger is unreachable, so the balance is unknown ({exc})", 1) from None
            raise
        if args.faucet is not None:
            if w.real_value:
                raise CliError("the faucet exists only on development networks; this ledger holds real value", 2)
            amount = parse_amount(args.faucet, w.decimals)
            api.get(DepositOut, "POST", f"/api/v1/billing/wallet/{w.address}/deposit", json={"amount": amount})
            w = api.get(WalletOut, "GET", "/api/v1/billing/wallet")
        if args.json:
            json.dump(w.model_dump(mode="json"), out, indent=2)
            print(file=out)
            return 0
        label = "" if w.real_value else "  (development ledger: NO REAL VALUE)"
        print(f"address   {w.address}", file=out)
        print(f"ledger    {w.ledger}{label}", file=out)
        print(f"mint      {w.mint} ({w.decimals} decimals)", file=out)
        print(f"balance   {fmt_amount(w.balance, w.decimals)} dGPU", file=out)
        return 0
    finally:
        api.close()


def _solana_wallet(args: argparse.Namespace, out: IO[str]) -> int:
    """The node key's wallet on Solana, read over RPC (no node needed)."""
    import trio
    from solders.keypair import Keypair

    from dgpu.client.wallet import solana_wallet_report
    from dgpu.contracts.errors import ContractsError
    from dgpu.contracts.solana_escrow import SolanaEscrow
    from dgpu.node.adapters.keystore import load_keystore
    from dgpu.node.errors import KeystoreError

    if args.program_id is None:
        raise CliError("--solana-rpc needs --program-id (the dGPU escrow program)", 2)
    settings = settings_of(args)
    try:
        key = load_keystore(settings.key_file, passphrase=os.environ.get("DGPU_KEY_PASSPHRASE"))
    except KeystoreError as exc:
        raise CliError(f"cannot load the node key: {exc}", 2) from None
    keypair = Keypair.from_bytes(bytes(key.to_solana_keypair()))

    async def report() -> dict[str, Any]:
        escrow = SolanaEscrow(args.solana_rpc, args.program_id, keypair)
        try:
            return await solana_wallet_report(escrow, create_token_account=args.create_token_account)
        finally:
            await escrow.aclose()

    try:
        w = trio.run(report)
    except ContractsError as exc:
        raise CliError(f"Solana: {exc}", 1) from None
    if args.json:
        json.dump(w, out, indent=2)
        print(file=out)
        return 0
    print(f"address   {w['address']}", file=out)
    print(f"SOL       {w['sol']}", file=out)
    print(f"mint      {w['mint']} ({w['decimals']} decimals)", file=out)
    print(f"balance   {w['dgpu']} dGPU", file=out)
    if w["token_account"]:
        print(f"token acc {w['token_account']}", file=out)
    return 0
