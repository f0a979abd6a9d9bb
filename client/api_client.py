"""The renter commands' blocking client of the node's local API.

Errors become :class:`CliError` with the API's message; answers are parsed with the API's own
wire models (``dgpu.node.services.api.schema``); an expired access token is refreshed once with
the stored (rotating) refresh token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from dgpu._http import sync_client
from dgpu.client.settings import ClientSettings, SettingsError, load_settings
from dgpu.node.adapters.bootstrap_client import decode_error_body
from dgpu.node.services.api.schema import WalletOut

__all__ = ["Api", "ApiCallError", "CliError", "answer_of", "settings_of", "store_tokens"]

M = TypeVar("M", bound=BaseModel)


class CliError(Exception):
    """A message for the user; the command exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ApiCallError(CliError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]", 1)
        self.status, self.api_code = status, code


def settings_of(args: argparse.Namespace) -> ClientSettings:
    """The commands' configuration from their common flags (file < environment < flags)."""
    try:
        return load_settings({"config": args.config, "api_url": args.api_url, "data_dir": args.data_dir,
                              "timeout": args.timeout})
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None


def store_tokens(path: Path, tokens: dict[str, Any]) -> None:
    """Write the token file atomically, mode 0600 from its creation (it holds bearer tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f)
    os.replace(tmp, path)


class Api:
    """A small blocking client of the node's API; errors become CliError with the API's message."""

    def __init__(self, settings: ClientSettings, *, auth: bool = True) -> None:
        self.settings = settings
        headers = {}
        if auth:
            token = settings.token()
            if token is None:
                raise CliError(f"no token: run `dgpu login` first (it writes {settings.token_file})", 3)
            headers["authorization"] = f"Bearer {token}"
        self.http = sync_client(base_url=settings.api_url, timeout=settings.timeout_s, headers=headers)
        #: a stored login may be refreshed (rotating refresh token); a DGPU_TOKEN cannot
        self._can_refresh = auth and not settings.env_token
        self._ledger_warned = False

    def close(self) -> None:
        self.http.close()

    def _refresh(self) -> bool:
        """Swap the stored refresh token for a new pair (rotation); False when there is none."""
        try:
            stored = json.loads(self.settings.token_file.read_text())
        except (OSError, ValueError):
            return False
        refresh = stored.get("refresh_token") if isinstance(stored, dict) else None
        if not refresh:
            return False
        try:
            r = self.http.post("/api/v1/auth/refresh", json={"refresh_token": refresh},
                               headers={"authorization": ""})
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        pair = r.json()
        store_tokens(self.settings.token_file, {**stored, **{k: pair[k] for k in (
            "access_token", "expires_at", "refresh_token", "refresh_expires_at") if k in pair}})
        self.http.headers["authorization"] = f"Bearer {pair['access_token']}"
        return True

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """One API call; an expired access token is refreshed once, transparently."""
        r = self._request(method, path, **kw)
        if r.status_code == 401 and self._can_refresh and self._refresh():
            r = self._request(method, path, **kw)
        return answer_of(r)

    def get(self, model: type[M], method: str, path: str, **kw: Any) -> M:
        """One API call whose answer is parsed as ``model`` (the API's own wire model)."""
        try:
            return model.model_validate(self.call(method, path, **kw))
        except ValidationError as exc:
            raise CliError(f"the node's answer to {method} {path} is not what this CLI expects "
                           f"({exc.error_count()} error(s)); are the node and the CLI the same version?") from None

    def decimals(self) -> int | None:
        """The mint's decimals, read from the ledger through the node; None without a ledger."""
        try:
            return self.get(WalletOut, "GET", "/api/v1/billing/wallet").decimals
        except ApiCallError as exc:
            # amounts are then shown in base units; say why once, so "0" is not mistaken for a balance
            if not self._ledger_warned:
                print(f"dgpu: the ledger is unavailable ({exc}); amounts are in base units", file=sys.stderr)
                self._ledger_warned = True
            return None

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the node's API at {self.http.base_url} ({type(exc).__name__}); "
                           "is the node running with its API enabled?", 4) from None


def answer_of(r: httpx.Response) -> Any:
    """The JSON of a (read) answer; an error answer raises ApiCallError (a 401 says how to log in again)."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code >= 400:
        code, message = decode_error_body(body, r.status_code, r.reason_phrase)
        if r.status_code == 401:
            message += " (run `dgpu login` again)"
        raise ApiCallError(r.status_code, code, message)
    return body
