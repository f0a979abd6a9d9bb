"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package that re-exports its submodules' names would otherwise import all of them whenever any
one submodule is imported: ``dgpu.client.main`` (every ``dgpu`` command) would load the whole
renter library into a provider process, and ``dgpu.node.services.api.errors`` the renter
workflow behind the HTTP API. Each name is imported on first use instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``homes`` maps an exported name to the
    submodule (relative to ``package``) that defines it; the value is cached in ``namespace``."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{home}"), name)
        namespace[name] = value
        return value

    return __getattr__
