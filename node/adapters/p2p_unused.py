"""py-libp2p's subsystems a dGPU node never runs, kept out of the node's memory.

py-libp2p 0.8.1 imports, at module level, the code of every transport and service it offers,
used or not: ``libp2p.host.basic_host`` imports mDNS (zeroconf) and AutoTLS (ACME over requests),
``libp2p.custom_types`` and ``libp2p.transport`` import QUIC (aioquic, which brings pyOpenSSL and
service_identity) and the WebSocket transport. A dGPU node runs TCP + noise + yamux and finds
peers through bootstrap nodes, rendezvous and the DHT, so these ~15 MB of modules (measured by
``bench/node_rss.py --breakdown``) would sit unused in every node process.

:func:`skip_unused_libp2p_subsystems` makes imports of them return *skipped modules*: every name
looked up in one resolves to a placeholder class, so py-libp2p's own modules load, its type
aliases and ``isinstance`` checks work, and its ``except`` clauses stay valid (placeholders are
``Exception`` subclasses that nothing raises). Calling a placeholder, which is what using the
subsystem would do, raises :class:`SubsystemNotLoaded` naming the subsystem and the module that
asked for it. The node's command line calls it before py-libp2p is first imported; a program that
embeds dGPU (and may use these packages itself) is left alone unless it calls it too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

#: module (with its submodules) -> the subsystem of py-libp2p that is its only user in a node
UNUSED_SUBSYSTEMS: Mapping[str, str] = {
    "aioquic": "QUIC transport",
    "zeroconf": "mDNS discovery",
    "libp2p.security.tls.autotls": "AutoTLS certificates (ACME)",
    "libp2p.transport.websocket": "WebSocket transport",
}


class SubsystemNotLoaded(ImportError):
    """Something used a name of a module that :func:`skip_unused_libp2p_subsystems` skipped."""


class _Placeholder(type):
    """The metaclass of the placeholders a skipped module's names resolve to."""

    subsystem: str
    asked_by: str

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return cls  # ``Enum.MEMBER``, ``module.Class``: still the placeholder

    def __getitem__(cls, item: object) -> _Placeholder:
        return cls  # ``Generic[T]`` subscripts in type aliases

    def __call__(cls, *args: object, **kwargs: object) -> Any:
        raise SubsystemNotLoaded(
            f"{cls.__module__}.{cls.__qualname__}: py-libp2p's {cls.subsystem} is not loaded in a dGPU "
            f"node (imported by {cls.asked_by}; see dgpu.node.adapters.p2p_unused)")


class SkippedModule(types.ModuleType):
    """A module that was not loaded: its names are placeholders, created on first lookup."""

    def __init__(self, name: str, subsystem: str, asked_by: str) -> None:
        super().__init__(name, f"Not loaded: py-libp2p's {subsystem} (dgpu.node.adapters.p2p_unused).")
        self.__path__: list[str] = []  # a package, so its submodules come here too
        self.subsystem, self.asked_by = subsystem, asked_by

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = _Placeholder(name, (Exception,), {
            "__module__": self.__name__, "__qualname__": name, "subsystem": self.subsystem,
            "asked_by": self.asked_by})
        setattr(self, name, placeholder)
        return placeholder


class SkippingFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A ``sys.meta_path`` finder that answers imports of ``skipped`` modules with a SkippedModule."""

    def __init__(self, skipped: Mapping[str, str]) -> None:
        self.skipped = dict(skipped)
        #: skipped module -> the module whose import asked for it first
        self.asked_by: dict[str, str] = {}

    def subsystem_of(self, fullname: str) -> str | None:
        for name, subsystem in self.skipped.items():
            if fullname == name or fullname.startswith(name + "."):
                return subsystem
        return None

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if self.subsystem_of(fullname) is None:
            return None
        self.asked_by.setdefault(fullname, _importer())
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return SkippedModule(spec.name, self.subsystem_of(spec.name) or "?", self.asked_by.get(spec.name, "?"))

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # nothing to run: that is the point


def _importer() -> str:
    """The module whose ``import`` statement is being served (the first frame outside importlib)."""
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", "?"))
        if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
            return name
        frame = frame.f_back
    return "?"


def skip_unused_libp2p_subsystems() -> SkippingFinder | None:
    """Skip :data:`UNUSED_SUBSYSTEMS` in this process from now on; returns the finder doing it.

    Returns ``None`` (and changes nothing) once py-libp2p is imported: its imports are done.
    Modules already imported stay as they are. Calling it again returns the installed finder.
    """
    for finder in sys.meta_path:
        if isinstance(finder, SkippingFinder):
            return finder
    if "libp2p" in sys.modules:
        return None
    finder = SkippingFinder({name: subsystem for name, subsystem in UNUSED_SUBSYSTEMS.items()
                             if name not in sys.modules})
    sys.meta_path.insert(0, finder)
    return finder
