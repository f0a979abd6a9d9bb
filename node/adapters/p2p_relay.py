"""Circuit relay v2 for dGPU: the hop service on bootstrap nodes, reservations, relayed dials.

py-libp2p 0.8.1 ships the relay protocol but leaves every step to the caller (LIBP2P-NOTES.md,
pitfall 12), and its swarm never dials ``/p2p-circuit`` addresses itself. This module does the
steps:

- :class:`RelayService` (bootstrap nodes) serves ``/libp2p/circuit/relay/0.2.0/hop`` under
  :class:`RelayLimits`: reservations in total and per IP, reservation lifetime, concurrent
  circuits in total and per reserved peer, and a duration and byte cap per circuit. Its
  counters (``circuits_active``, ``bytes_relayed``, ...) are plain attributes for /metrics.
  Over 0.8.1's hop handler it fixes three things: a peer reserves only for itself (0.8.1 takes
  the peer id from the message), one circuit ending no longer closes another circuit's streams
  to the same peer (0.8.1 keys them by peer), and the duration cap holds for idle circuits too.
- :class:`~dgpu.node.adapters.p2p_relay_client.RelayClient` (every node) is the other side:
  stop handler, reservations, relayed dials, hole punching.

Theory of operation: a provider that is not publicly reachable keeps reservations on up to
``want`` relays (the bootstrap nodes); each lasts ``reservation_ttl_s`` and only while the
provider stays connected to that relay, so the loop drops reservations whose relay
connection is gone and reserves on another relay (or the same one once it is back). A renter
dials ``<relay>/p2p-circuit/p2p/<provider>``: a CONNECT on a hop stream, then noise + yamux
over that stream, registered in the swarm like any connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits as LibRelayLimits
from libp2p.relay.circuit_v2.utils import write_delimited_msg

from dgpu.node.adapters.p2p_limits import guard_foreign_handler

__all__ = ["Path", "RelayLimits", "RelayService", "circuit_addr", "is_circuit"]

log = logging.getLogger(__name__)

#: how a connection to a peer runs: straight, through a relay, or punched after a relayed start
Path = str  # "direct" | "relay" | "hole-punched"

_RELAY_READ_BYTES = 64 * 1024
_STEP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What a relay (hop) gives away. Sized for dGPU's traffic over one renter-provider circuit:
    a negotiation (a few KiB), a job's logs for the job's whole run, a result download."""

    #: live reservations in total (a provider behind NAT holds one per relay)
    max_reservations: int = 128
    #: live reservations from one IP address (a household with a few GPU boxes)
    max_reservations_per_ip: int = 4
    #: a reservation lasts this long unless refreshed (providers refresh at a third left)
    reservation_ttl_s: int = 900
    #: concurrent circuits through this relay
    max_circuits: int = 64
    #: concurrent circuits to one reserved peer (renters of one provider)
    max_circuits_per_peer: int = 8
    #: a circuit is cut after this long: a rental's job stream lives as long as the job
    circuit_duration_s: int = 2 * 3600
    #: bytes both ways over one circuit: logs plus a result of a few hundred MiB; larger
    #: results need a direct (or hole-punched) connection
    circuit_bytes: int = 512 * 1024**2

    def library(self) -> LibRelayLimits:
        return LibRelayLimits(duration=self.circuit_duration_s, data=self.circuit_bytes,
                              max_circuit_conns=self.max_circuits_per_peer,
                              max_reservations=self.max_reservations,
                              reservation_ttl=self.reservation_ttl_s)


def is_circuit(addr: str) -> bool:
    return "/p2p-circuit" in addr


def circuit_addr(relay_addr: str, relay_peer: str, target_peer: str) -> str:
    """``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<target>`` (``relay_addr`` with or without /p2p)."""
    base = relay_addr if "/p2p/" in relay_addr else f"{relay_addr}/p2p/{relay_peer}"
    return f"{base}/p2p-circuit/p2p/{target_peer}"


def _remote_ip(stream: Any) -> str | None:
    with contextlib.suppress(Exception):  # not every stream type knows its remote address
        remote = stream.get_remote_address()
        if remote:
            return str(remote[0])
    return None


async def _status(stream: Any, code: StatusCode) -> None:
    with contextlib.suppress(Exception), trio.move_on_after(_STEP_TIMEOUT_S):
        await write_delimited_msg(stream, HopMessage(type=HopMessage.STATUS,
                                                     status=to_proto_status(code)))


class RelayService(CircuitV2Protocol):
    """The hop side, under :class:`RelayLimits`; counters for /metrics."""

    def __init__(self, host: Any, limits: RelayLimits) -> None:
        super().__init__(host, limits=limits.library(), allow_hop=True, read_timeout=10,
                         write_timeout=10, close_timeout=5)
        self.relay_limits = limits
        self.circuits_active = 0
        self.circuits_opened = 0
        self.circuits_refused = 0
        #: circuits cut by the duration or byte cap
        self.circuits_cut = 0
        self.reservations_accepted = 0
        self.reservations_refused = 0
        self.bytes_relayed = 0
        self._reserver_ip: dict[ID, str] = {}
        #: hop streams of circuits being set up or running (to count each circuit once)
        self._sources: set[Any] = set()

    @property
    def reservations_active(self) -> int:
        rm = self.resource_manager
        return sum(1 for p in list(rm._reservations) if rm.get_reservation(p) is not None)

    def metrics(self) -> dict[str, int]:
        """Every limit and counter, flat (what /metrics exports)."""
        lim = self.relay_limits
        return {
            "relay_limit_reservations": lim.max_reservations,
            "relay_limit_reservations_per_ip": lim.max_reservations_per_ip,
            "relay_limit_reservation_ttl_seconds": lim.reservation_ttl_s,
            "relay_limit_circuits": lim.max_circuits,
            "relay_limit_circuits_per_peer": lim.max_circuits_per_peer,
            "relay_limit_circuit_duration_seconds": lim.circuit_duration_s,
            "relay_limit_circuit_bytes": lim.circuit_bytes,
            "relay_reservations_active": self.reservations_active,
            "relay_reservations_accepted_total": self.reservations_accepted,
            "relay_reservations_refused_total": self.reservations_refused,
            "relay_circuits_active": self.circuits_active,
            "relay_circuits_opened_total": self.circuits_opened,
            "relay_circuits_refused_total": self.circuits_refused,
            "relay_circuits_cut_total": self.circuits_cut,
            "relay_bytes_total": self.bytes_relayed,
        }

    def guard(self) -> None:
        """Put the hop handler under a catch-all and a deadline a little past a circuit's."""
        guard_foreign_handler(self.host, str(HOP_PROTOCOL),
                              self.relay_limits.circuit_duration_s + 60.0)

    async def _handle_reserve(self, stream: Any, msg: Any) -> None:
        peer = stream.muxed_conn.peer_id
        if msg.HasField("peer") and msg.peer.id and ID(msg.peer.id) != peer:
            self.reservations_refused += 1  # 0.8.1 would reserve for whoever the message names
            await _status(stream, StatusCode.PERMISSION_DENIED)
            return
        ip = _remote_ip(stream) or ""
        rm = self.resource_manager
        if rm.get_reservation(peer) is None:
            live = {p for p in list(self._reserver_ip) if rm.get_reservation(p) is not None}
            for gone in set(self._reserver_ip) - live:
                del self._reserver_ip[gone]
            same_ip = sum(1 for p in live if self._reserver_ip[p] == ip)
            if same_ip >= self.relay_limits.max_reservations_per_ip or (
                    len(live) >= self.relay_limits.max_reservations):
                self.reservations_refused += 1
                await _status(stream, StatusCode.RESERVATION_REFUSED)
                return
        self._reserver_ip[peer] = ip  # before the reply: the next request may come at once
        await super()._handle_reserve(stream, msg)
        if rm.get_reservation(peer) is not None:
            self.reservations_accepted += 1
        else:
            self._reserver_ip.pop(peer, None)
            self.reservations_refused += 1

    async def _handle_connect(self, stream: Any, msg: Any) -> None:
        if self.circuits_active >= self.relay_limits.max_circuits:
            self.circuits_refused += 1
            await _status(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED)
            with contextlib.suppress(Exception):
                await stream.reset()
            return
        self.circuits_active += 1
        self._sources.add(stream)
        try:
            await super()._handle_connect(stream, msg)
        finally:
            self.circuits_active -= 1
            self._sources.discard(stream)

    async def _relay_data(self, src_stream: Any, dst_stream: Any, peer_id: ID,
                          deadline: float | None = None,
                          circuit_data_limit: list[int] | None = None) -> None:
        """One direction of one circuit; ends (and closes both streams) on EOF or a cap."""
        if src_stream in self._sources:  # the source-to-target direction: once per circuit
            self.circuits_opened += 1
        left = math.inf if deadline is None else max(0.0, deadline - time.monotonic())
        cut = False
        try:
            with trio.move_on_after(left) as scope:
                while True:
                    try:
                        data = await src_stream.read(_RELAY_READ_BYTES)
                    except Exception:  # EOF or reset from either side: the circuit is over
                        break
                    if not data:
                        break
                    if circuit_data_limit is not None:
                        if len(data) > circuit_data_limit[0]:
                            cut = True
                            break
                        circuit_data_limit[0] -= len(data)
                    self.bytes_relayed += len(data)
                    with trio.fail_after(self.write_timeout):
                        await dst_stream.write(data)
            cut = cut or scope.cancelled_caught
        except Exception:  # a write that failed or stalled ends the circuit
            log.debug("relay write to %s failed", peer_id, exc_info=True)
        finally:
            if cut:
                self.circuits_cut += 1
            with trio.CancelScope(shield=True):
                for s in (src_stream, dst_stream):
                    with contextlib.suppress(Exception), trio.move_on_after(2):
                        await (s.reset() if cut else s.close())
            for key, pair in list(self._active_relays.items()):  # this circuit's entries only
                if pair[0] is src_stream or pair[0] is dst_stream or pair[1] is src_stream:
                    self._active_relays.pop(key, None)
