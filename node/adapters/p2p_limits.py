"""Inbound connection bounds that are given back when the connection goes away.

py-libp2p 0.8.1 takes a slot of ``Swarm._inbound_limiter`` for every inbound connection and
returns it only when the handler task ends, and that task ends only when the whole swarm
shuts down (``_do_handle_inbound_connection`` parks on ``manager.wait_finished()``). A closed
connection therefore keeps its slot forever: after ``max_connections`` connections in its
lifetime a node refuses every newcomer (LIBP2P-NOTES.md, "Connection slots that are never
given back"). :class:`InboundBudget` replaces that limiter and counts what is alive instead:

- a slot is *pending* from the moment the swarm takes it (``acquire_nowait``, in the
  connection's handler task) until the connection is either established (the swarm's
  ``connected`` notification, matched by the remote ``ip:port``) or failed (the swarm's
  ``release`` from the same task, or no progress within ``handshake_timeout_s``);
- an established inbound connection holds its slot until the swarm's ``disconnected``
  notification for it;
- per remote IP, pending plus live connections are capped too (:class:`_BudgetGate`, the
  swarm's connection gate for inbound connections; dials out pass straight to the inner gate).

The swarm's own ``max_connections`` check at registration (``add_conn``) already counts live
connections, so together they bound live connections in total, per address and handshakes in
flight. Upstream: the fix belongs in ``Swarm._handle_inbound_connection`` (release the slot when
the ``SwarmConn`` closes, not when the swarm does); until a release has it, this module is the
wrapper, installed by :func:`install`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.custom_types import TProtocol

from dgpu.protocol.ids import (
    BLOB_PROTOCOL,
    JOB_PROTOCOL,
    JOB_PROTOCOL_V2,
    NEGOTIATE_PROTOCOL,
    OFFERS_SYNC_PROTOCOL,
)

__all__ = [
    "ConnectionBounds",
    "InboundBudget",
    "StreamBudget",
    "StreamLimiter",
    "connection_direction",
    "default_stream_budgets",
    "disable_auto_connector",
    "guard_foreign_handler",
    "install",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectionBounds:
    #: live inbound connections plus handshakes in flight
    max_inbound: int = 64
    #: live plus pending inbound connections from one IP address (a flood of fresh identities
    #: from one host takes this many slots, not all of them)
    max_per_ip: int = 16
    #: loopback peers are exempt from ``max_per_ip``: a local development network runs every
    #: node on 127.0.0.1 (tests that exercise the per-IP bound turn this off)
    exempt_loopback: bool = True
    #: a handshake that neither completed nor failed by then stops counting (the library's own
    #: upgrade timeout ends it soon after)
    handshake_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class StreamBudget:
    """Inbound streams of one protocol: concurrent per peer and in total, and the first frame's
    deadline (a stream that says nothing stops holding a slot after it)."""

    per_peer: int
    total: int
    first_frame_timeout_s: float | None = None


def default_stream_budgets() -> dict[str, StreamBudget]:
    # separate budgets, so idle streams of one protocol cannot starve another: a stranger's
    # silent negotiate streams must not lock renters out of their running jobs' streams
    return {
        # a renter negotiates one or two rentals at a time; a JobRequest is sent at once
        NEGOTIATE_PROTOCOL: StreamBudget(per_peer=2, total=32, first_frame_timeout_s=3.0),
        # one stream per running job (a renter may run several with one provider)
        JOB_PROTOCOL: StreamBudget(per_peer=8, total=64, first_frame_timeout_s=10.0),
        JOB_PROTOCOL_V2: StreamBudget(per_peer=8, total=64, first_frame_timeout_s=10.0),
        # inputs and results move one or two at a time per rental
        BLOB_PROTOCOL: StreamBudget(per_peer=4, total=32, first_frame_timeout_s=10.0),
        # a neighbour syncs the offers once when it first sees us
        OFFERS_SYNC_PROTOCOL: StreamBudget(per_peer=1, total=16, first_frame_timeout_s=10.0),
    }


class StreamLimiter:
    """Counts one protocol's inbound streams per peer and in total; released when each ends."""

    def __init__(self, per_peer: int, total: int) -> None:
        self.per_peer = per_peer
        self.total = total
        self._by_peer: Counter[str] = Counter()
        self._count = 0

    def try_acquire(self, peer: str) -> bool:
        if self._count >= self.total or self._by_peer[peer] >= self.per_peer:
            return False
        self._count += 1
        self._by_peer[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self._count -= 1
        self._by_peer[peer] -= 1
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]



def _ip_of(remote: Any) -> tuple[str, int] | None:
    """``(ip, port)`` of a multiaddr or a ``(host, port)`` tuple, else None."""
    if isinstance(remote, tuple) and len(remote) == 2:
        return str(remote[0]), int(remote[1])
    try:
        ip = remote.value_for_protocol("ip4")
    except Exception:  # multiaddr raises when the protocol is absent
        try:
            ip = remote.value_for_protocol("ip6")
        except Exception:  # not an IP address (e.g. a relayed circuit)
            return None
    try:
        port = int(remote.value_for_protocol("tcp"))
    except Exception:  # no TCP port: count by IP only
        port = 0
    return str(ip), port


class InboundBudget:
    """The swarm's inbound limiter (``acquire_nowait``/``release``/``total_tokens``), live-counted.

    All methods run in trio's single thread without awaiting, so each check-and-take is atomic.
    """

    def __init__(self, bounds: ConnectionBounds, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.bounds = bounds
        self._clock = clock
        #: handler task -> [taken at, (ip, port) once the gate has seen the address]
        self._pending: dict[object, list[Any]] = {}
        #: id(SwarmConn) -> remote ip of each established inbound connection
        self._live: dict[int, str] = {}
        #: refusals by bound (metrics and tests read it)
        self.refused: Counter[str] = Counter()

    # -- the CapacityLimiter surface the swarm uses ---------------------------------------------
    @property
    def total_tokens(self) -> int:
        return self.bounds.max_inbound

    def acquire_nowait(self) -> None:
        self._expire()
        if len(self._live) + len(self._pending) >= self.bounds.max_inbound:
            self.refused["inbound_total"] += 1
            raise trio.WouldBlock
        self._pending[trio.lowlevel.current_task()] = [self._clock(), None]

    def release(self) -> None:
        # called from the handler task when it ends: a connection that never became live, or
        # the swarm shutting down; a live connection already moved to ``_live``
        self._pending.pop(trio.lowlevel.current_task(), None)

    # -- what the gate and the notifee report -------------------------------------------------
    def is_inbound_task(self) -> bool:
        return trio.lowlevel.current_task() in self._pending

    def admit_address(self, addr: tuple[str, int]) -> bool:
        """The gate's check for the current handler task's remote address."""
        entry = self._pending.get(trio.lowlevel.current_task())
        if entry is None:
            return True
        ip = addr[0]
        if not (self.bounds.exempt_loopback and _is_loopback(ip)):
            same = sum(1 for v in self._live.values() if v == ip) + sum(
                1 for e in self._pending.values() if e[1] is not None and e[1][0] == ip)
            if same >= self.bounds.max_per_ip:
                self.refused["inbound_per_ip"] += 1
                return False
        entry[1] = addr
        return True

    def connected(self, conn: Any) -> None:
        if connection_direction(conn) != "inbound":
            return
        addr = _ip_of(_remote_address(conn))
        task = None
        if addr is not None:
            task = next((t for t, e in self._pending.items() if e[1] == addr), None)
        if task is None and self._pending:  # address unknown: the oldest handshake finished
            task = min(self._pending, key=lambda t: self._pending[t][0])
        if task is not None:
            del self._pending[task]
        self._live[id(conn)] = addr[0] if addr is not None else ""

    def disconnected(self, conn: Any) -> None:
        self._live.pop(id(conn), None)

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _expire(self) -> None:
        cutoff = self._clock() - self.bounds.handshake_timeout_s
        for task in [t for t, e in self._pending.items() if e[0] < cutoff]:
            del self._pending[task]


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def connection_direction(conn: Any) -> str:
    """"inbound" or "outbound" (libp2p's Direction of a swarm connection); "" when unknown."""
    direction = getattr(conn, "direction", None)  # libp2p's Direction enum (an IntEnum)
    return str(getattr(direction, "name", direction) or "").lower()


def _remote_address(conn: Any) -> Any:
    try:
        return conn.muxed_conn.get_remote_address()
    except Exception:  # transports without an address (relayed circuits)
        return None


class _BudgetGate:
    """The swarm's connection gate: inbound addresses go through the budget first."""

    def __init__(self, inner: Any, budget: InboundBudget) -> None:
        self._inner = inner
        self._budget = budget

    async def is_allowed(self, remote_addr: Any) -> bool:
        if self._budget.is_inbound_task():
            addr = _ip_of(remote_addr)
            if addr is not None and not self._budget.admit_address(addr):
                return False
        return bool(await self._inner.is_allowed(remote_addr))

    def __getattr__(self, name: str) -> Any:  # the rest of the gate's surface (allow/deny lists)
        return getattr(self._inner, name)


class _BudgetNotifee:
    """Feeds connection events to the budget (the swarm runs each notifee in its own task)."""

    def __init__(self, budget: InboundBudget) -> None:
        self._budget = budget

    async def connected(self, network: Any, conn: Any) -> None:
        self._budget.connected(conn)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._budget.disconnected(conn)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None


def install(swarm: Any, bounds: ConnectionBounds) -> InboundBudget:
    """Replace the swarm's never-released inbound limiter by a live-counted budget.

    This sets two collaborators the swarm exposes (its limiter and its connection gate) and
    registers a notifee; no method of the swarm is replaced.
    """
    budget = InboundBudget(bounds)
    swarm._inbound_limiter = budget
    swarm.connection_gate = _BudgetGate(swarm.connection_gate, budget)
    swarm.register_notifee(_BudgetNotifee(budget))
    return budget


def guard_foreign_handler(host: Any, protocol: str, timeout_s: float) -> None:
    """Re-register a library service's handler under a deadline and a catch-all."""
    handlers = host.get_mux().handlers
    inner = handlers.get(TProtocol(protocol))
    if inner is None:
        return

    async def guarded(stream: Any) -> None:
        try:
            with trio.move_on_after(timeout_s):
                await inner(stream)
        except Exception:  # libp2p stream handler: an escape would end the whole host
            log.debug("%s handler failed", protocol, exc_info=True)
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                # already closed by the inner handler: the normal case
                with contextlib.suppress(Exception):
                    await stream.reset()

    host.set_stream_handler(TProtocol(protocol), guarded)


def disable_auto_connector(host: Any) -> None:
    """0.8.1's auto-connector dials up to 32 peerstore entries on its own: discovery decides."""

    async def _not_started() -> None:
        return None

    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        connector.start = _not_started  # leaves _started False, so maybe_connect is a no-op
