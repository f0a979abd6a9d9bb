"""One configuration scheme for the renter commands: file, then environment, then flags.

Precedence, lowest to highest:

1. the TOML file: ``--config PATH``, else ``$DGPU_CONFIG``, else ``~/.config/dgpu/config.toml``
   (a missing default file is fine; a missing file that was asked for is an error);
2. environment variables ``DGPU_API_URL``, ``DGPU_DATA_DIR``, ``DGPU_TOKEN``, ``DGPU_TIMEOUT``
   (``XDG_DATA_HOME`` moves the default data dir as it moves the node's);
3. command-line flags (``--api-url``, ``--data-dir``, ``--timeout``).

TOML keys (all optional)::

    api_url = "http://127.0.0.1:8700"   # the node's local API (default: what the node wrote to
                                        # <data_dir>/api.json, else this URL)
    data_dir = "~/.local/share/dgpu/renter"   # the node's data dir: identity.json, api-token.json
    timeout = 30                         # seconds per API request

The access token is never read from the file (it is a secret with a short life): ``dgpu login``
writes it to ``<data_dir>/api-token.json`` (mode 0600); ``DGPU_TOKEN`` overrides that. The same
file's ``[node]`` and ``[bootstrap]`` tables hold the daemons' settings (``dgpu.node.layered_settings``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgpu.node.data_dir import API_FILE, default_data_dir
from dgpu.node.layered_settings import DEFAULT_CONFIG, MAX_CONFIG_BYTES, SettingsError, config_path, read_toml

__all__ = ["DEFAULT_API_URL", "DEFAULT_CONFIG", "HELP", "ClientSettings", "SettingsError", "load_settings"]

DEFAULT_API_URL = "http://127.0.0.1:8700"
TOKEN_FILE = "api-token.json"
_KEYS = {"api_url", "data_dir", "timeout"}
#: the daemons' settings in the same file (dgpu.node.layered_settings)
_DAEMON_TABLES = {"node", "bootstrap"}

HELP = (
    "configuration: a TOML file (--config, $DGPU_CONFIG or ~/.config/dgpu/config.toml: api_url, "
    "data_dir, timeout), then environment variables (DGPU_API_URL, DGPU_DATA_DIR, DGPU_TOKEN, "
    "DGPU_TIMEOUT), then flags, each overriding the one before."
)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    api_url: str
    data_dir: Path
    timeout_s: float
    #: from DGPU_TOKEN; otherwise ``token()`` reads the token file
    env_token: str | None
    config_file: Path | None

    @property
    def token_file(self) -> Path:
        return self.data_dir / TOKEN_FILE

    @property
    def key_file(self) -> Path:
        return self.data_dir / "identity.json"

    def token(self) -> str | None:
        if self.env_token:
            return self.env_token
        try:
            data = json.loads(self.token_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read {self.token_file}: {type(exc).__name__}") from None
        token = data.get("access_token") if isinstance(data, dict) else None
        return str(token) if token else None


def _read_file(path: Path, *, required: bool) -> dict[str, Any]:
    data = read_toml(path, required=required)
    unknown = set(data) - _KEYS - _DAEMON_TABLES
    if unknown:
        raise SettingsError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    return {k: v for k, v in data.items() if k in _KEYS}


def _node_api_url(data_dir: Path) -> str | None:
    """The URL the node serving this data dir wrote when its API started listening."""
    try:
        data = json.loads((data_dir / API_FILE).read_text()[:MAX_CONFIG_BYTES])
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return url if isinstance(url, str) else None


def _timeout(value: Any, where: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: timeout must be a number of seconds") from None
    if not 0 < t <= 3600:
        raise SettingsError(f"{where}: timeout must be in (0, 3600] seconds")
    return t


def load_settings(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
                  ) -> ClientSettings:
    """Merge file < environment < ``flags`` (keys ``config``, ``api_url``, ``data_dir``, ``timeout``;
    None means "not given")."""
    flags = dict(flags or {})
    env = os.environ if env is None else env
    path, required = config_path(flags.get("config"), env)
    file = _read_file(path, required=required)
    api_url: Any = file.get("api_url")
    # the same default as ``dgpu node --role renter`` (DGPU_DATA_DIR, then XDG)
    data_dir: Any = file.get("data_dir") or default_data_dir("renter", env)
    timeout = _timeout(file.get("timeout", 30), str(path))
    if env.get("DGPU_API_URL"):
        api_url = env["DGPU_API_URL"]
    if env.get("DGPU_DATA_DIR"):
        data_dir = env["DGPU_DATA_DIR"]
    if env.get("DGPU_TIMEOUT"):
        timeout = _timeout(env["DGPU_TIMEOUT"], "DGPU_TIMEOUT")
    if flags.get("api_url"):
        api_url = flags["api_url"]
    if flags.get("data_dir"):
        data_dir = flags["data_dir"]
    if flags.get("timeout") is not None:
        timeout = _timeout(flags["timeout"], "--timeout")
    data_path = Path(str(data_dir)).expanduser().absolute()
    if api_url is None:
        api_url = _node_api_url(data_path) or DEFAULT_API_URL
    if not isinstance(api_url, str) or not api_url.startswith(("http://", "https://")):
        raise SettingsError("api_url must be an http:// or https:// URL")
    return ClientSettings(api_url=api_url.rstrip("/"), data_dir=data_path,
                          timeout_s=timeout, env_token=env.get("DGPU_TOKEN") or None,
                          config_file=path if path.exists() else None)
