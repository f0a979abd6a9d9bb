"""Logging for the node, the bootstrap service and the demo.

py-libp2p's ``libp2p`` logger has ``propagate=False`` and no handler, so its warnings reach
stderr through ``logging.lastResort`` and bypass any configuration. :func:`configure` gives
it our handler, caps it at WARNING (its INFO/DEBUG chatter is enormous), and demotes the
known-benign messages listed in LIBP2P-NOTES.md to DEBUG so a healthy node's log stays quiet.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, TextIO

__all__ = ["BenignLibp2pFilter", "configure", "get_logger", "libp2p_imported", "quiet_libp2p"]

#: substrings of py-libp2p 0.8.1 messages that are normal operation, demoted to DEBUG
_BENIGN: Final = (
    "Failed to read DHT message from stream",  # every normal DHT stream close
    "Error handling stream from",  # RendezvousService, on every request
    "MultiselectClient handshake",  # host closing while identify is in flight
    "Failed to open stream",  # same, multi-line variant
    "GRAFT flood detected",  # 1 s heartbeat with many peers
    "Error reading from hop stream",  # relay
    "fail to deliver message to subscription",  # we drain; a full queue is logged by us
    "No validator found",  # DHT non-strict validation
    "Rendezvous service started",
    "Failed to update the Certified-Addr-Book",
    "invalid-signed-record",
    "exceeded size limit",  # our guard: oversized pubsub frames are dropped on purpose
    "Spam protection",
    "failed to upgrade security for peer",  # dialling a dead peer's stale address
    "Failed to open TCP stream",  # same (a refused port); we log the failed dial ourselves
    "fail to upgrade mux for peer",  # same
    "Error checking connection to",  # health monitor, a peer that went away
)


class BenignLibp2pFilter(logging.Filter):
    """Demote known-benign libp2p records to DEBUG (dropped unless DEBUG is enabled)."""

    def __init__(self, debug_enabled: bool) -> None:
        super().__init__()
        self._debug = debug_enabled

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("libp2p"):
            return True
        if record.levelno < logging.WARNING:
            # some libp2p modules pin their logger to INFO at import time; their chatter
            # (e.g. the auto-connector's state every second) is noise unless debugging
            return self._debug
        if record.name.startswith("libp2p"):
            try:
                text = record.getMessage()
            except (TypeError, ValueError):  # a libp2p format string that does not match
                text = str(record.msg)
            if any(s in text for s in _BENIGN):
                record.levelno = logging.DEBUG
                record.levelname = "DEBUG"
                return self._debug
        return True


class _Route:
    """configure()'s handler and level, routed to libp2p's logger again by :func:`libp2p_imported`."""

    handler: logging.Handler | None = None
    level: int = logging.INFO


_ROUTE = _Route()


def configure(level: str | int = "INFO", *, stream: TextIO | None = None,
              name: str = "dgpu") -> None:
    """Route our loggers and libp2p's into one handler. Safe to call again (replaces it)."""
    lvl = logging.getLevelName(level) if isinstance(level, str) else level
    if not isinstance(lvl, int):
        lvl = logging.INFO
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(BenignLibp2pFilter(lvl <= logging.DEBUG))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    _ROUTE.handler, _ROUTE.level = handler, lvl
    _route_libp2p(handler, lvl)
    # httpx logs every request at INFO (the ledger is polled every few seconds): DEBUG only
    for noisy in ("multiaddr", "async_service", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))


def _route_libp2p(handler: logging.Handler, lvl: int) -> None:
    lib = logging.getLogger("libp2p")
    for old in list(lib.handlers):
        lib.removeHandler(old)
    lib.addHandler(handler)
    lib.propagate = False  # its handler is ours now; propagating would print twice
    # libp2p's INFO level is chatty even when healthy; WARNING unless we are debugging
    lib.setLevel(logging.DEBUG if lvl <= logging.DEBUG else logging.WARNING)
    # some libp2p modules pin their own logger to INFO; cap every one already created
    for name_, obj in list(logging.Logger.manager.loggerDict.items()):
        if name_.startswith("libp2p.") and isinstance(obj, logging.Logger):
            obj.setLevel(logging.NOTSET if lvl <= logging.DEBUG else logging.WARNING)


def libp2p_imported() -> None:
    """Route libp2p's logging again once libp2p is imported (the p2p adapter calls this when it
    opens a host). Its import (``setup_logging``) empties the ``libp2p`` logger's handlers, and
    nodes import it after :func:`configure` ran (lazily, to keep small commands light): its
    benign noise then went unfiltered to stderr through ``logging.lastResort``, bare lines
    without time or level. Idempotent."""
    if _ROUTE.handler is not None:
        _route_libp2p(_ROUTE.handler, _ROUTE.level)
    else:
        quiet_libp2p()


class _ToRoot(logging.Handler):
    """Hands libp2p's records that pass the filter to the application's own logging."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


def quiet_libp2p() -> None:
    """For the renter library inside someone's script: libp2p's benign noise (dead peers,
    "Failed to open stream ... /meshsub/1.1.0") is dropped, its real warnings reach the script's
    logging (or stderr), and nothing else of the script's logging changes. Idempotent; a
    process that called :func:`configure` keeps that configuration."""
    lib = logging.getLogger("libp2p")
    if lib.handlers:
        return
    handler = _ToRoot()
    handler.addFilter(BenignLibp2pFilter(logging.getLogger().isEnabledFor(logging.DEBUG)))
    lib.addHandler(handler)
    lib.propagate = False  # its records reach the root through the handler, filtered


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
