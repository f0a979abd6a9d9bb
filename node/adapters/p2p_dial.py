"""Diagnostics around dialling and listening that py-libp2p 0.8.1 does not give clearly.

- :func:`mismatched_peer_id`: the identity a remote proved when a dial failed because it is not
  the peer we asked for (the reason is buried three wrappers deep).
- :func:`check_port_free`: refuse a listen port another process holds (the library's
  SO_REUSEPORT bind would share it silently).
"""

from __future__ import annotations

import errno
import re
import socket

from dgpu.node.errors import ConfigError

__all__ = ["check_port_free", "mismatched_peer_id"]

_MISMATCH = re.compile(r"remote_peer_id_from_pubkey=(\w+)")


def mismatched_peer_id(exc: BaseException) -> str | None:
    """The peer id the remote proved, when a dial failed because it is not the one we asked for.

    0.8.1 buries the noise handshake's ``PeerIDMismatchesPubkey`` under a MultiError and two
    wrappers, with a generic message on top: walk causes, contexts and sub-exceptions."""
    from libp2p.security.noise.exceptions import PeerIDMismatchesPubkey

    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, PeerIDMismatchesPubkey):
            found = _MISMATCH.search(str(e))
            return found.group(1) if found else None
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        for group in ("exceptions", "errors"):  # ExceptionGroup / libp2p's MultiError
            stack.extend(x for x in (getattr(e, group, None) or ()) if isinstance(x, BaseException))
    return None


def check_port_free(host: str, port: int) -> None:
    """ConfigError if another process listens on ``host:port``.

    The library binds with SO_REUSEPORT, so a second process on a port in use would start
    "listening" and silently share the port (LIBP2P-NOTES.md, pitfall 4); a plain bind first
    turns that into an error. (A process that binds between this check and the listener's bind
    still slips through; that window is a few milliseconds at start-up.)"""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of an earlier process in TIME_WAIT do not count, a listener does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use (is another dgpu node running?)") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
