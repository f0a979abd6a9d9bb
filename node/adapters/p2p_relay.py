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
- :class:`RelayClient` (every node) accepts relayed connections (the stop side), makes and
  refreshes reservations (:meth:`RelayClient.maintain`), builds our ``/p2p-circuit``
  addresses, dials through a relay (:meth:`RelayClient.dial`) and, with hole punching on,
  tries DCUtR right after a relayed dial, before any dGPU stream uses the connection.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeer
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits as LibRelayLimits
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from dgpu.node.adapters.p2p_limits import guard_foreign_handler
from dgpu.node.errors import DialError

__all__ = ["Path", "RelayClient", "RelayLimits", "RelayService", "circuit_addr", "is_circuit"]

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


@dataclass(slots=True)
class _Reservation:
    relay: str
    relay_addr: str
    expires_at: float
    #: lifetime the relay granted (refreshed at a third left)
    granted_s: float


class _Punch(DCUtRProtocol):
    """DCUtR without 0.8.1's background driver: :class:`RelayClient` punches right after a
    relayed dial, before dGPU streams use the connection (the library's driver punches
    whenever, then closes the relayed connection a minute later, streams and all)."""

    async def _auto_drive_loop(self) -> None:
        return None

    async def _close_relayed_conns_after_grace(self, peer_id: ID, grace: float = 60.0) -> None:
        # close the relayed leg only once nothing runs on it any more
        await trio.sleep(grace)
        while True:
            conns = self.host.get_network().connections.get(peer_id, [])
            relayed = [c for c in conns if _conn_is_relayed(c)]
            if not relayed or len(relayed) == len(conns):
                return
            idle = [c for c in relayed if not c.get_streams()]
            for c in idle:
                with contextlib.suppress(Exception):
                    await c.close()
            if len(idle) == len(relayed):
                return
            await trio.sleep(5)


def _conn_is_relayed(conn: Any) -> bool:
    try:
        addrs = conn.get_transport_addresses()
    except Exception:  # a connection being torn down
        return False
    return bool(addrs) and all(is_circuit(str(a)) for a in addrs)


class RelayClient:
    """Stop side, reservations, relayed dials and hole punching for one host."""

    def __init__(self, host: Any, *, hole_punch: bool, dial_timeout_s: float) -> None:
        self.host = host
        self.stop = CircuitV2Protocol(host, allow_hop=False)
        # short dials: the peer's private addresses (it is behind NAT) often hang rather than fail
        self.punch: _Punch | None = _Punch(host, dial_timeout=3) if hole_punch else None
        self.dial_timeout_s = dial_timeout_s
        #: a relayed dial waits this long for a hole punch before it returns
        self.punch_head_start_s = 6.0
        #: a hole punch attempt ends after this
        self.punch_budget_s = 15.0
        #: relay peer id -> live reservation
        self.reservations: dict[str, _Reservation] = {}
        self.reservations_made = 0
        self.reservation_failures = 0
        self.relayed_dials = 0
        self.punch_attempts = 0
        self.punch_successes = 0
        self._punched: set[str] = set()
        self.changed = trio.Event()  # set (and replaced) whenever our circuit addresses change
        #: relays to try for a peer we cannot dial directly: (relay, the address we dial it at)
        self.relays: list[tuple[PeerInfo, str]] = []

    def use_relays(self, addrs: list[str]) -> None:
        """The relays we know (the bootstrap nodes' full multiaddrs)."""
        from libp2p.peer.peerinfo import info_from_p2p_addr

        self.relays = [(info_from_p2p_addr(multiaddr.Multiaddr(a)), a) for a in addrs]

    def circuits_to(self, peer: ID) -> list[str]:
        """Circuit addresses to try for ``peer``: those it published, then one per known relay
        (a provider behind NAT holds reservations on the bootstrap nodes)."""
        me, target = self.host.get_id(), str(peer)
        out: list[str] = []
        with contextlib.suppress(Exception):  # a peer the peerstore has never heard of
            for a in self.host.get_peerstore().addrs(peer):
                text = str(a)
                if is_circuit(text):
                    out.append(text if text.endswith(f"/p2p/{target}") else f"{text}/p2p/{target}")
        connected = set(self.host.get_connected_peers())
        for info, addr in sorted(self.relays, key=lambda r: r[0].peer_id not in connected):
            if info.peer_id not in (peer, me):
                out.append(circuit_addr(addr, str(info.peer_id), target))
        return list(dict.fromkeys(out))

    def services(self) -> list[Any]:
        return [self.stop] + ([self.punch] if self.punch is not None else [])

    # ---- reservations (the side behind NAT) ----
    def circuit_addrs(self) -> list[str]:
        me = str(self.host.get_id())
        return [circuit_addr(r.relay_addr, r.relay, me) for r in self.reservations.values()]

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def reserve(self, relay: PeerInfo, relay_addr: str) -> bool:
        """Reserve a slot on ``relay`` (connected first); True when it granted one."""
        pid = relay.peer_id
        try:
            with trio.fail_after(self.dial_timeout_s):
                await self.host.connect(relay)
                stream = await self.host.new_stream(pid, [HOP_PROTOCOL])
                try:
                    await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
                    resp = await read_delimited_msg(stream, HopMessage)
                finally:
                    with contextlib.suppress(Exception):
                        await stream.close()
        except Exception as exc:  # dial, multiselect, stream and decode errors alike
            self.reservation_failures += 1
            log.info("no reservation on relay %s: %s", str(pid)[:16], type(exc).__name__)
            return False
        if int(resp.status) != int(StatusCode.OK) or not resp.HasField("reservation"):
            self.reservation_failures += 1
            log.info("relay %s refused a reservation (status %s)", str(pid)[:16], resp.status)
            return False
        new = str(pid) not in self.reservations
        expires = float(resp.reservation.expire)
        self.reservations[str(pid)] = _Reservation(str(pid), relay_addr, expires,
                                                   max(1.0, expires - time.time()))
        self.reservations_made += 1
        if new:
            log.info("reserved a slot on relay %s", str(pid)[:16])
            self._notify()
        return True

    def drop(self, relay: str | None = None) -> None:
        """Forget one reservation (or all): we stop advertising it; the relay lets it lapse."""
        gone = [relay] if relay is not None else list(self.reservations)
        if any(self.reservations.pop(r, None) is not None for r in gone):
            self._notify()

    async def maintain(self, relays: list[tuple[PeerInfo, str]], wanted: Callable[[], bool],
                       want: int = 2, poll_s: float = 1.0) -> None:
        """Keep ``min(want, len(relays))`` reservations while ``wanted()``; none otherwise.

        A reservation holds only while we are connected to its relay: a lost relay is dropped
        at once and its slot taken elsewhere. Failed relays are retried with a backoff."""
        retry_at: dict[str, tuple[float, float]] = {}
        while True:
            if not wanted():
                self.drop()
            else:
                await self._maintain_once(relays, want, retry_at)
            await trio.sleep(poll_s)

    async def _maintain_once(self, relays: list[tuple[PeerInfo, str]], want: int,
                             retry_at: dict[str, tuple[float, float]]) -> None:
        connected = {str(p) for p in self.host.get_connected_peers()}
        now = time.time()
        for rid, held in list(self.reservations.items()):
            if rid not in connected or held.expires_at <= now:
                log.warning("lost the reservation on relay %s; reserving elsewhere", rid[:16])
                self.drop(rid)
        for info, addr in relays:
            rid = str(info.peer_id)
            res = self.reservations.get(rid)
            ttl_left = res.expires_at - now if res else 0.0
            if res is not None and ttl_left > res.granted_s / 3:
                continue
            if res is None and len(self.reservations) >= want:
                continue
            due, backoff = retry_at.get(rid, (0.0, 1.0))
            if res is None and now < due:
                continue
            if await self.reserve(info, addr):
                retry_at.pop(rid, None)
            else:
                retry_at[rid] = (now + backoff, min(backoff * 2, 30.0))

    # ---- dialling through a relay (the renter's side) ----
    async def dial(self, circuit: str) -> None:
        """Connect to the target of a ``/p2p-circuit`` address through its relay."""
        ma = multiaddr.Multiaddr(circuit)
        text = str(ma)
        relay_part, _, target_part = text.partition("/p2p-circuit")
        target = ID.from_base58(target_part.rsplit("/p2p/", 1)[1])
        relay_ma = multiaddr.Multiaddr(relay_part)
        relay = ID.from_base58(relay_part.rsplit("/p2p/", 1)[1])
        relay_addrs = [multiaddr.Multiaddr(relay_part.rsplit("/p2p/", 1)[0])] if (
            relay_part.startswith("/ip")) else []
        try:
            with trio.fail_after(self.dial_timeout_s):
                await self.host.connect(PeerInfo(relay, relay_addrs))
                stream = await self.host.new_stream(relay, [HOP_PROTOCOL])
                await write_delimited_msg(stream, HopMessage(
                    type=HopMessage.CONNECT, peer=CircuitPeer(id=target.to_bytes())))
                resp = await read_delimited_msg(stream, HopMessage)
                if int(resp.status) != int(StatusCode.OK):
                    with contextlib.suppress(Exception):
                        await stream.reset()
                    raise DialError(f"relay {str(relay)[:16]} refused the circuit "
                                    f"(status {StatusCode(resp.status).name})")
                raw = RawConnection(stream=stream, initiator=True,
                                    connection_type=ConnectionType.RELAYED,
                                    addresses=[relay_ma.encapsulate(multiaddr.Multiaddr(
                                        f"/p2p-circuit/p2p/{target}"))])
                await self.host.upgrade_outbound_connection(raw, target)
        except trio.TooSlowError:
            raise DialError(f"dialling {target} through relay {str(relay)[:16]} timed out") from None
        except DialError:
            raise
        except Exception as exc:  # dial, multiselect, stream and handshake errors alike
            raise DialError(f"cannot reach {target} through relay {str(relay)[:16]}: "
                            f"{type(exc).__name__}") from exc
        self.relayed_dials += 1
        nursery = self.punch._nursery if self.punch is not None else None
        if nursery is not None:
            # punch in the background (streams opened meanwhile stay on the relay; later ones
            # prefer the direct connection), but give a quick punch the head start
            done = trio.Event()
            nursery.start_soon(self._try_punch, target, done)
            with trio.move_on_after(self.punch_head_start_s):
                await done.wait()

    async def _try_punch(self, target: ID, done: trio.Event) -> None:
        assert self.punch is not None
        self.punch_attempts += 1
        # well inside the swarm's 20 s grace: past it, the second connection to a peer makes
        # 0.8.1 trim one (max_connections_per_peer=1), possibly the relayed one in use
        with trio.move_on_after(self.punch_budget_s):
            try:
                ok = await self.punch.initiate_hole_punch(target)
            except Exception:  # a failed punch leaves the relayed connection as it was
                log.debug("hole punch to %s failed", target, exc_info=True)
                ok = False
            if ok and self._has_direct(target):
                self.punch_successes += 1
                self._punched.add(str(target))
                log.info("hole punch to %s succeeded: direct connection", str(target)[:16])
        if not self._has_direct(target):
            log.info("no hole punch to %s: the connection stays relayed", str(target)[:16])
        done.set()

    def _has_direct(self, peer: ID) -> bool:
        conns = self.host.get_network().connections.get(peer, [])
        return any(not _conn_is_relayed(c) for c in conns)

    def path_to(self, peer: ID) -> Path | None:
        """How we are connected to ``peer`` now; None when we are not."""
        conns = self.host.get_network().connections.get(peer, [])
        if not conns:
            return None
        if self._has_direct(peer):
            punched = str(peer) in self._punched or (
                self.punch is not None and peer in self.punch._direct_connections)
            return "hole-punched" if punched else "direct"
        return "relay"
