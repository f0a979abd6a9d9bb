"""The relay client: relayed connections in and out, reservations, DCUtR hole punching.

:class:`RelayClient` (every node) accepts relayed connections (the stop side), makes and
refreshes reservations (:meth:`RelayClient.maintain`), builds our ``/p2p-circuit`` addresses,
dials through a relay (:meth:`RelayClient.dial`) and, with hole punching on, tries DCUtR right
after a relayed dial, with a head start before dGPU streams use the connection. The hop side
and the address helpers are in :mod:`p2p_relay`.
"""

from __future__ import annotations

import contextlib
import logging
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
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeer
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from dgpu.node.adapters.p2p_limits import guard_foreign_handler
from dgpu.node.adapters.p2p_relay import Path, circuit_addr, is_circuit
from dgpu.node.errors import DialError

__all__ = ["RelayClient"]

log = logging.getLogger(__name__)


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

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        # we dial through a relay only after a direct dial failed moments ago: repeating it
        # (0.8.1 does, up to its dial timeout) only delays the punch
        return False

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
        self.punch_head_start_s = 4.0
        #: a hole punch attempt ends after this
        self.punch_budget_s = 15.0
        #: relay peer id -> live reservation
        self.reservations: dict[str, _Reservation] = {}
        self.reservations_made = 0
        self.reservation_failures = 0
        self.relayed_dials = 0
        self.punch_attempts = 0
        self.punch_successes = 0
        #: peers we had a relayed connection with, oldest first (bounded): a direct connection
        #: to them later is a punched one, whichever side's dial won (0.8.1 marks only its own)
        self._relayed: dict[str, None] = {}
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
        if any(info.peer_id == peer for info, _ in self.relays):
            return []  # relays are public: one that does not answer is down, not behind NAT
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

    def guard(self) -> None:
        """Put the library's DCUtR handler under a catch-all and a deadline. (Not the stop
        handler: its stream *is* the relayed connection once it returns; it bounds its own read.)"""
        if self.punch is not None:
            guard_foreign_handler(self.host, str(DCUTR_PROTOCOL), 120.0)

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
        transport = relay_part.rsplit("/p2p/", 1)[0]  # "" for a bare /p2p/<relay>
        relay_addrs = [multiaddr.Multiaddr(transport)] if transport else []
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
        self._remember_relayed(str(target))
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
            return "hole-punched" if str(peer) in self._relayed else "direct"
        self._remember_relayed(str(peer))  # e.g. an inbound relayed connection
        return "relay"

    def _remember_relayed(self, peer: str) -> None:
        self._relayed.pop(peer, None)
        self._relayed[peer] = None
        while len(self._relayed) > 4096:
            del self._relayed[next(iter(self._relayed))]
