"""``dgpu login``: sign the bootstrap node's challenge with the node key; store the tokens (0600)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO, Any

from dgpu.client.api_client import Api, ApiCallError, CliError, settings_of, store_tokens
from dgpu.node.adapters.bootstrap_client import BadChallenge, signed_challenge

__all__ = ["cmd_login"]


def cmd_login(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    """Sign the bootstrap's challenge with the node key (through the node's auth proxy); store
    the tokens in the data dir, mode 0600. Registers the wallet's role only with ``--register``."""
    from dgpu.node.adapters.keystore import load_keystore
    from dgpu.node.errors import KeystoreError

    settings = settings_of(args)
    if not settings.key_file.exists():
        raise CliError(f"no node key at {settings.key_file} (start the node once, or give --data-dir)", 2)
    try:
        key = load_keystore(settings.key_file, passphrase=os.environ.get("DGPU_KEY_PASSPHRASE"))
    except KeystoreError as exc:
        raise CliError(f"cannot load the node key: {exc}", 2) from None
    wallet = key.public_key.wallet
    api = Api(settings, auth=False)

    def signed(action: str, role: str | None = None) -> dict[str, str]:
        body: dict[str, Any] = {"wallet": wallet, "action": action}
        if role is not None:
            body["role"] = role
        challenge = api.call("POST", "/api/v1/auth/challenge", json=body)
        try:
            return signed_challenge(key, challenge, action)
        except BadChallenge:
            raise CliError("the node returned a challenge for something else; not signing it", 1) from None

    try:
        if args.register:
            api.call("POST", "/api/v1/auth/register", json=signed("register", args.register))
        try:
            pair = api.call("POST", "/api/v1/auth/login", json=signed("login"))
        except ApiCallError as exc:
            if exc.api_code == "not_registered":
                raise CliError(f"wallet {wallet} has no role at the bootstrap node yet: run "
                               "`dgpu login --register renter` (or provider) once", 3) from None
            raise
    finally:
        api.close()
    path = settings.token_file
    store_tokens(path, {"access_token": pair["access_token"], "expires_at": pair["expires_at"],
                        "refresh_token": pair["refresh_token"], "refresh_expires_at": pair["refresh_expires_at"],
                        "wallet": wallet, "role": pair["role"]})
    print(f"logged in as {wallet} ({pair['role']}); token stored in {path} (expires at {pair['expires_at']})",
          file=out)
    return 0
