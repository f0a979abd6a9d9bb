"""Every flag of a daemon command also settable from a TOML file and a ``DGPU_*`` variable.

Precedence, highest first: the flag, then ``DGPU_<DEST>`` (the flag's dest in upper case; lists
comma-separated; switches ``1/true/yes/on`` or ``0/false/no/off``), then the key ``<dest>`` in the
command's table of the config file (``[node]``, ``[bootstrap]``), then the flag's default. The file
is the renter commands' (``client/settings.py``): ``--config PATH``, else ``$DGPU_CONFIG``, else
``~/.config/dgpu/config.toml`` (a missing default file is fine). Values from the file and the
environment go through the flag's own argparse ``type=`` and ``choices``, so a bad one is refused
with the same words as a bad flag. No setting is a secret today (key passphrases stay in
``DGPU_KEY_PASSPHRASE``, which is no flag); nothing here logs a value.

:func:`make_layered` marks a parser's defaults when the command is built (``--help`` still shows
them); :func:`resolve` fills every flag not given once the command line is parsed.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

__all__ = ["DEFAULT_CONFIG", "MAX_CONFIG_BYTES", "SettingsError", "config_path", "make_layered", "read_toml", "resolve"]

DEFAULT_CONFIG: Final = Path("~/.config/dgpu/config.toml")
#: a config file is a few lines; anything bigger is a mistake
MAX_CONFIG_BYTES: Final = 64 * 1024
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
#: flags that are not settings
_NOT_LAYERED: Final = frozenset({"help", "version", "config"})


class SettingsError(Exception):
    """The configuration cannot be used (unreadable file, unknown key, bad value): one line."""


class _Unset:
    """A flag's default while the layers below the command line may still replace it."""

    __slots__ = ("required", "value")

    def __init__(self, value: Any, *, required: bool) -> None:
        self.value = value
        self.required = required

    def __str__(self) -> str:  # ``--help`` shows the real default
        return str(self.value)


class _UnsetList(list[Any]):
    """An ``append`` flag's default: argparse copies it before its first append, and the copy is
    a plain list, so a value still of this type was not given on the command line."""

    def __init__(self, value: list[Any] | None, *, required: bool) -> None:
        super().__init__(value or [])
        self.value = value
        self.required = required

    def __copy__(self) -> list[Any]:
        return list(self)


def config_path(flag: str | Path | None, env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file and whether it must exist (it was asked for by flag or ``$DGPU_CONFIG``)."""
    asked = flag or env.get("DGPU_CONFIG")
    return (Path(asked).expanduser(), True) if asked else (DEFAULT_CONFIG.expanduser(), False)


def read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    """The file's top-level table ({} for a missing file that was not asked for)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise SettingsError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise SettingsError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def _layered(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in _NOT_LAYERED]


def make_layered(parser: argparse.ArgumentParser) -> None:
    """Let :func:`resolve` tell flags given on the command line from defaults; a required flag
    becomes optional to argparse (the file or environment may set it) and is checked there."""
    for action in _layered(parser):
        required, action.required = action.required, False
        if required:
            action.help = f"{action.help} (required: the flag, its variable or the file)"
        if isinstance(action, argparse._AppendAction):
            action.default = _UnsetList(action.default, required=required)
        else:
            action.default = _Unset(action.default, required=required)


def _env_name(dest: str) -> str:
    return "DGPU_" + dest.upper()


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, raw: Any, where: str) -> Any:
    """One value through the flag's converter; TOML numbers count as their text."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise SettingsError(f"{where}: expected text or a number for {action.option_strings[0]}")
    try:
        value = parser._get_value(action, str(raw))
        parser._check_value(action, value)
    except argparse.ArgumentError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return value


def _switch(action: argparse.Action, raw: Any, where: str) -> Any:
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        raw = raw.strip().lower() in _TRUE
    if not isinstance(raw, bool):
        raise SettingsError(f"{where}: {action.option_strings[0]} is a switch: true or false")
    # store_true's const is True; a switch set false keeps the flag's off value
    return action.const if raw else action.default.value


def _value(parser: argparse.ArgumentParser, action: argparse.Action, raw: Any, where: str, *,
           from_env: bool) -> Any:
    if isinstance(action, argparse._AppendAction):
        items = [s.strip() for s in raw.split(",") if s.strip()] if from_env else raw
        if not isinstance(items, list):
            raise SettingsError(f"{where}: {action.option_strings[0]} takes a list")
        return [_convert(parser, action, item, where) for item in items]
    if action.nargs == 0:  # store_true / store_false / store_const
        return _switch(action, raw, where)
    return _convert(parser, action, raw, where)


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace, *, table: str,
            env: Mapping[str, str] | None = None) -> argparse.Namespace:
    """``args`` with every flag not given filled from ``env``, then the config file's ``[table]``,
    then its default. Raises :class:`SettingsError` (one line) on an unknown key or a bad value."""
    env = os.environ if env is None else env
    actions = {a.dest: a for a in _layered(parser)}
    path, required = config_path(getattr(args, "config", None), env)
    section = read_toml(path, required=required).get(table, {})
    if not isinstance(section, dict):
        raise SettingsError(f"config file {path}: [{table}] must be a table")
    unknown = sorted(set(section) - set(actions))
    if unknown:
        raise SettingsError(f"config file {path}: unknown key {unknown[0]} in [{table}]")
    out = argparse.Namespace(**vars(args))
    for dest, action in actions.items():
        current = getattr(args, dest)
        if not isinstance(current, _Unset | _UnsetList):
            continue  # given on the command line
        var = _env_name(dest)
        if env.get(var):
            value = _value(parser, action, env[var], var, from_env=True)
        elif dest in section:
            value = _value(parser, action, section[dest], f"config file {path}: {dest}", from_env=False)
        elif current.required:
            raise SettingsError(f"{action.option_strings[0]} is required (or {var}, or {dest} in [{table}] "
                                f"of {path})")
        else:
            value = current.value
        setattr(out, dest, value)
    return out
