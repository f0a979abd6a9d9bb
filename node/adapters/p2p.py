"""The libp2p adapter: one host (TCP + noise + yamux), its lifecycle, streams, pubsub, discovery.

Rules:

- This is the only module (with ``p2p_pubsub`` and ``p2p_framing``) that imports libp2p.
  Library exceptions are converted here into :mod:`dgpu.node.errors`.
- Stream handlers registered through :meth:`P2PNode.set_handler` never let an exception
  escape (one escape ends the whole host), run under a deadline, and are bounded per peer
  and in total; over the bound the stream is reset at once.
- Shutdown closes the host (``host.close()``: leaving ``host.run()`` alone leaves the
  listener open) and stops pubsub's sweeper thread.

Theory of operation: :func:`open_node` builds the host, gossipsub, the DHT and (for a
bootstrap node) the rendezvous service, starts them in order inside one nursery and yields a
:class:`P2PNode`. Leaving the ``async with`` cancels everything and closes the host.
Discovery lives in :mod:`p2p_discovery`, connection bounds in :mod:`p2p_limits`, circuit relay
and hole punching in :mod:`p2p_relay` / :mod:`p2p_relay_client` (a failed direct dial retries
through the relays the node knows: the swarm never dials ``/p2p-circuit`` itself).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.tools.anyio_service import background_trio_service

from dgpu.node.adapters.keystore import libp2p_key_pair
from dgpu.node.adapters.p2p_dial import check_port_free, mismatched_peer_id
from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.adapters.p2p_limits import (
    ConnectionBounds,
    InboundBudget,
    StreamBudget,
    StreamLimiter,
    default_stream_budgets,
    disable_auto_connector,
    guard_foreign_handler,
    install,
)
from dgpu.node.adapters.p2p_pubsub import (
    GossipConfig,
    GuardedPubsub,
    build_gossip,
    gossip_message,
    repair_pubsub_streams,
)
from dgpu.node.adapters.p2p_relay import Path, RelayLimits, RelayService, is_circuit
from dgpu.node.adapters.p2p_relay_client import RelayClient
from dgpu.node.errors import (
    CapacityError,
    ConfigError,
    DialError,
    NetworkError,
    PeerIdMismatchError,
    PeerRefusedError,
)
from dgpu.node.logging import libp2p_imported
from dgpu.node.ports.network import GossipMessage, StreamHandler, TopicValidator, Verdict
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.peers import peer_id_of_wallet, wallet_of_peer

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = [
    "P2PConfig",
    "P2PNode",
    "StreamBudget",
    "open_node",
    "parse_peer_addr",
    "peer_id_of_wallet",
    "wallet_of_peer",
]

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class P2PConfig:
    listen_host: str = "127.0.0.1"
    #: 0 = let the kernel choose (SO_REUSEPORT makes "pick a free port, then bind" unsafe)
    listen_port: int = 0
    dht_server: bool = False
    rendezvous_server: bool = False
    gossip: GossipConfig | None = field(default_factory=GossipConfig)
    #: live connections in total; a renter needs a few providers, a provider a mesh of ~6-12
    max_connections: int = 64
    #: live inbound connections per remote IP (loopback exempt unless turned off)
    max_connections_per_ip: int = 16
    #: count loopback peers against ``max_connections_per_ip`` (tests; a local network of many
    #: nodes on 127.0.0.1 needs the exemption)
    limit_loopback: bool = False
    #: per-protocol inbound stream budgets; other protocols of ours get the two numbers below
    stream_budgets: dict[str, StreamBudget] = field(default_factory=default_stream_budgets)
    #: concurrent inbound streams of another protocol of ours from one peer
    max_inbound_streams_per_peer: int = 8
    #: concurrent inbound streams of another protocol of ours in total (a task + buffers each)
    max_inbound_streams_total: int = 128
    #: how long a dial may take on loopback/WAN before we call the peer unreachable
    dial_timeout_s: float = 10.0
    #: an inbound handler that has not finished by then is cancelled (jobs set their own)
    default_handler_timeout_s: float = 30.0
    #: serve circuit relay v2 (hop) under these limits (bootstrap nodes); None = no relay
    relay: RelayLimits | None = None
    #: accept relayed connections and dial ``/p2p-circuit`` addresses
    relay_client: bool = True
    #: after a relayed dial, try DCUtR hole punching to a direct connection
    hole_punch: bool = True
    #: "auto" (dial-back by bootstrap nodes), "public" or "private" (always reserve on relays)
    reachability: str = "auto"
    #: a direct dial that is given up on sooner when a relayed address is there to fall back on
    direct_dial_timeout_s: float = 5.0


def parse_peer_addr(text: str) -> PeerInfo:
    """``/ip4/.../tcp/N/p2p/ID`` → PeerInfo; ConfigError if it is not one."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except Exception as exc:  # multiaddr raises assorted types for malformed text
        raise ConfigError(f"not a peer multiaddr: {text!r}") from exc


def _peer_id(peer: str | ID) -> ID:
    if isinstance(peer, ID):
        return peer
    try:
        return ID.from_base58(peer)
    except Exception as exc:  # base58/multihash errors
        raise ConfigError(f"not a peer id: {peer!r}") from exc


class P2PNode:
    """A running host. Created by :func:`open_node`; valid only inside its ``async with``."""

    def __init__(self, host: Any, config: P2PConfig, pubsub: GuardedPubsub | None,  # noqa: PLR0917
                 dht: KadDHT | None, nursery: trio.Nursery, connections: InboundBudget,
                 relay: RelayClient | None = None, relay_service: RelayService | None = None,
                 ) -> None:
        self.host = host
        #: reservations, relayed dials, hole punching (None: relay_client off)
        self.relay = relay
        #: the hop service with its limits and counters (bootstrap nodes; None elsewhere)
        self.relay_service = relay_service
        self.config = config
        self.pubsub = pubsub
        self.dht = dht
        self._nursery = nursery
        #: live-counted inbound connection bounds (refusals by bound in ``connections.refused``)
        self.connections = connections
        #: streams refused because a bound was full, by protocol (tests and metrics read it)
        self.refused_by_protocol: Counter[str] = Counter()

    @property
    def refused_streams(self) -> int:
        return sum(self.refused_by_protocol.values())

    def _budget(self, protocol: str) -> StreamBudget:
        return self.config.stream_budgets.get(protocol) or StreamBudget(
            self.config.max_inbound_streams_per_peer, self.config.max_inbound_streams_total)

    # ---- identity and addresses ----
    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/ID``) to reach us at: while we hold relay reservations
        (not publicly reachable), only our ``/p2p-circuit`` addresses, else where we listen."""
        circuits = self.relay.circuit_addrs() if self.relay is not None else []
        return circuits or [str(a) for a in self.host.get_addrs()]

    def path_to(self, peer: str) -> Path | None:
        """"direct", "relay" or "hole-punched": how we are connected to ``peer``; None if not."""
        pid = _peer_id(peer)
        if self.relay is not None:
            return self.relay.path_to(pid)
        return "direct" if self.host.get_network().connections.get(pid) else None

    @property
    def multiaddr(self) -> str:
        return self.addrs[0]

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self.host.get_connected_peers()]

    # ---- connections and streams ----
    async def connect(self, addr: str | PeerInfo, *, retry_now: bool = False) -> str:
        """Dial a peer (no-op when connected); DialError if it cannot be reached.

        ``retry_now`` lifts the library's 60 s block on a peer whose last dial failed (the
        caller runs its own backoff, or knows the peer has come back)."""
        if isinstance(addr, str) and is_circuit(addr):
            return await self._dial_circuit(addr)
        info = parse_peer_addr(addr) if isinstance(addr, str) else addr
        if info.peer_id == self.host.get_id():
            return str(info.peer_id)
        if retry_now:
            self.host.get_network().unblock_peer(info.peer_id)
        if len(self.host.get_connected_peers()) >= self.config.max_connections and (
            info.peer_id not in self.host.get_connected_peers()
        ):
            raise CapacityError("connection cap reached")
        # relays to fall back on: a direct dial that fails gives up sooner
        circuits = self.relay.circuits_to(info.peer_id) if self.relay is not None else []
        try:
            with trio.fail_after(self.config.direct_dial_timeout_s if circuits
                                 else self.config.dial_timeout_s):
                await self.host.connect(info)
        except trio.TooSlowError:
            if not circuits:
                raise DialError(f"dialling {info.peer_id} timed out") from None
            await self._via_relays(info.peer_id, circuits, "direct dial timed out")
        except (SwarmException, OSError, MultiselectClientError) as exc:
            actual = mismatched_peer_id(exc)
            if actual is not None:
                where = " or ".join(str(a) for a in info.addrs) or "that address"
                raise PeerIdMismatchError(f"peer id mismatch: the node at {where} is {actual}, not {info.peer_id}",
                                          expected=str(info.peer_id), actual=actual) from exc
            if not circuits:
                raise DialError(f"cannot reach {info.peer_id}: {type(exc).__name__}") from exc
            await self._via_relays(info.peer_id, circuits, type(exc).__name__)
        return str(info.peer_id)

    async def _dial_circuit(self, addr: str) -> str:
        if self.relay is None:
            raise DialError("this node does not dial through relays (relay_client is off)")
        info = parse_peer_addr(addr)
        if info.peer_id not in self.host.get_connected_peers():
            await self.relay.dial(addr)
        return str(info.peer_id)

    async def _via_relays(self, pid: ID, circuits: list[str], direct_error: str) -> None:
        errors = [f"direct: {direct_error}"]
        for circuit in circuits:
            try:
                await self._dial_circuit(circuit)
                return
            except NetworkError as exc:
                errors.append(str(exc))
        raise DialError(f"cannot reach {pid} directly or through a relay: {'; '.join(errors)}")

    def add_addrs(self, peer: str, addrs: list[str], ttl_s: int = 600) -> None:
        """Where a peer listens now (its newest offer): these replace the addresses known, since
        0.8.1 dials only the first stored address of each kind (a restarted provider's old port)."""
        pid = _peer_id(peer)
        mas = []
        for a in addrs:
            try:  # drop the trailing /p2p/<peer>, keep a circuit's /p2p/<relay>
                mas.append(multiaddr.Multiaddr(a.rsplit(f"/p2p/{peer}", 1)[0]
                                               if a.endswith(f"/p2p/{peer}") else a))
            except Exception:  # malformed address from the wire: skip it
                continue
        if mas:
            self.host.get_peerstore().clear_addrs(pid)
            self.host.get_peerstore().add_addrs(pid, mas, ttl_s)
            # new addresses (e.g. a provider restarted on another port): dial them at once
            # instead of waiting out the block a failed dial to the old ones left
            self.host.get_network().unblock_peer(pid)

    async def open_stream(self, peer: str, protocol: str, *, max_frame_bytes: int,
                          read_timeout_s: float) -> FramedStream:
        """A new stream to ``peer`` (dialled if needed), wrapped in frames."""
        pid = _peer_id(peer)
        if self.relay is not None and pid not in self.host.get_connected_peers():
            await self.connect(PeerInfo(pid, []))  # the swarm alone would never try a relay
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                raw = await self.host.new_stream(pid, [TProtocol(protocol)])
        except trio.TooSlowError:
            raise DialError(f"opening {protocol} to {peer} timed out") from None
        except (StreamFailure, MultiselectClientError) as exc:
            raise PeerRefusedError(f"{peer} refused {protocol}") from exc
        except (SwarmException, OSError) as exc:
            raise DialError(f"cannot reach {peer}: {type(exc).__name__}") from exc
        except NetworkError:
            raise
        except Exception as exc:  # 0.8.1 raises untyped errors from the muxer on a dying conn
            raise DialError(f"cannot open {protocol} to {peer}: {type(exc).__name__}") from exc
        return FramedStream(raw, remote_peer=peer, max_frame_bytes=max_frame_bytes,
                            read_timeout_s=read_timeout_s)

    def set_handler(self, protocol: str, handler: StreamHandler, *, max_frame_bytes: int,
                    read_timeout_s: float, handler_timeout_s: float | None = None) -> None:
        """Serve ``protocol``. The handler gets a FramedStream; it is closed afterwards.

        Inbound streams of ``protocol`` are bounded by its :class:`StreamBudget` (per peer and in
        total, released when the handler ends) and their first frame by its deadline."""
        limit_s = handler_timeout_s or self.config.default_handler_timeout_s
        budget = self._budget(protocol)
        limiter = StreamLimiter(budget.per_peer, budget.total)

        async def guarded(raw: Any) -> None:
            peer = str(raw.muxed_conn.peer_id)
            if not limiter.try_acquire(peer):
                self.refused_by_protocol[protocol] += 1
                log.info("refusing a %s stream from %s: inbound stream bound reached",
                         protocol, peer)
                await FramedStream(raw, max_frame_bytes=1, read_timeout_s=1).reset()
                return
            fs = FramedStream(raw, remote_peer=peer, max_frame_bytes=max_frame_bytes,
                              read_timeout_s=read_timeout_s,
                              first_frame_timeout_s=budget.first_frame_timeout_s)
            try:
                with trio.move_on_after(limit_s) as scope:
                    await handler(fs)
                if scope.cancelled_caught:
                    log.info("%s handler for %s hit its %.0f s deadline", protocol, peer, limit_s)
                    await fs.reset()
            except Exception:  # libp2p stream handler: an escape would end the whole host
                log.exception("%s handler for %s failed", protocol, peer)
                await fs.reset()
            finally:
                limiter.release(peer)
                await fs.close()

        self.host.set_stream_handler(TProtocol(protocol), guarded)

    async def ping(self, peer: str, *, timeout_s: float = 5.0) -> bool:
        """True when ``peer`` answers a libp2p ping within ``timeout_s`` (liveness check)."""
        from libp2p.host.ping import PingService

        with trio.move_on_after(timeout_s):
            try:
                rtts = await PingService(self.host).ping(_peer_id(peer), 1)
            except Exception:  # any failure to ping is "not alive"; the cause is irrelevant
                return False
            return len(rtts) > 0  # 0.8.1 yields no RTT (rather than raising) on some failures
        return False

    # ---- pubsub ----
    def _require_pubsub(self) -> GuardedPubsub:
        if self.pubsub is None:
            raise NetworkError("this node runs without pubsub")
        return self.pubsub

    async def subscribe(self, topic: str, validator: TopicValidator,
                        on_message: Callable[[GossipMessage], None] | None = None) -> None:
        """Join ``topic``; ``validator`` decides (synchronously) what is accepted and relayed.

        The validator is the gate: ACCEPT (or True) is delivered locally and forwarded;
        IGNORE is dropped without blame; REJECT (or False, or raising) is dropped and counted
        against the forwarder's score.
        """
        ps = self._require_pubsub()

        def libp2p_validator(forwarder: ID, msg: Any) -> bool:
            try:
                verdict = validator(gossip_message(topic, forwarder, msg))
            except Exception:  # a validator must answer, never raise into pubsub
                log.exception("topic validator for %s raised; message rejected", topic)
                return False
            if verdict is Verdict.IGNORE:
                ps.mark_ignored(msg)
                return False
            return verdict is Verdict.ACCEPT or verdict is True

        ps.set_topic_validator(topic, libp2p_validator, is_async_validator=False)
        sub = await ps.subscribe(topic)

        async def drain() -> None:
            # the library's subscription queue holds 32 and drops when full: keep it empty
            async for msg in sub:
                if on_message is None:
                    continue
                try:
                    on_message(gossip_message(topic, ps.my_id, msg))
                except ValueError:
                    continue

        self._nursery.start_soon(drain)

    async def publish(self, topic: str, data: bytes) -> None:
        ps = self._require_pubsub()
        if len(data) > ps.max_data_bytes:
            raise NetworkError(f"refusing to publish {len(data)} bytes (limit {ps.max_data_bytes})")
        await ps.publish(topic, data)

    def topic_peers(self, topic: str) -> list[str]:
        ps = self.pubsub
        if ps is None:
            return []
        return [str(p) for p in ps.peer_topics.get(topic, set())]

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._nursery.start_soon(fn, *args)


#: py-libp2p 0.8.1's yamux tuning knobs (read from the environment at each read). By default it
#: answers every read with a WINDOW_UPDATE frame, one more encrypted write per gossip RPC
#: received; "0" keeps go-yamux's rule (an update once half the window is consumed). At 30 nodes
#: on 2 cores that took idle CPU from 0.51 to 0.24 cores and offer propagation p50 from 1.6 s
#: to 0.2 s (bench/network.py). An operator's own PY_YAMUX_* setting wins.
YAMUX_SETTINGS = {"PY_YAMUX_RELEASE_ON_READ": "0"}


def tune_yamux() -> None:
    """Apply :data:`YAMUX_SETTINGS` to this process, unless already set."""
    for name, value in YAMUX_SETTINGS.items():
        os.environ.setdefault(name, value)


@asynccontextmanager
async def open_node(key: SigningKey, config: P2PConfig) -> AsyncIterator[P2PNode]:
    """Start a host with ``key`` as its identity; close everything on exit."""
    libp2p_imported()  # its import reset the libp2p logger that node logging had set up
    tune_yamux()
    check_port_free(config.listen_host, config.listen_port)
    host = new_host(
        key_pair=libp2p_key_pair(key),
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,  # else every connect() waits ~250 ms (notes, pitfall 2)
            max_connections=config.max_connections,
            min_connections=0,  # no auto-connector: discovery decides whom to dial
            low_watermark=0,
            high_watermark=config.max_connections,
            dial_timeout=config.dial_timeout_s,
        ),
    )
    disable_auto_connector(host)
    connections = install(host.get_network(), ConnectionBounds(
        max_inbound=config.max_connections, max_per_ip=config.max_connections_per_ip,
        exempt_loopback=not config.limit_loopback))
    pubsub: GuardedPubsub | None = None
    if config.gossip is not None:
        router = build_gossip(config.gossip)
        # created before any connection: it hooks the connection notifee
        pubsub = GuardedPubsub(host, router, max_data_bytes=config.gossip.max_data_bytes)
    dht = KadDHT(host, DHTMode.SERVER if config.dht_server else DHTMode.CLIENT)
    if config.rendezvous_server:
        from libp2p.discovery.rendezvous import RendezvousService
        from libp2p.discovery.rendezvous.config import RENDEZVOUS_PROTOCOL

        RendezvousService(host)
        # its handler reads with no deadline: a silent peer would pin a task forever
        guard_foreign_handler(host, str(RENDEZVOUS_PROTOCOL), 30.0)
    relay_service = RelayService(host, config.relay) if config.relay is not None else None
    relay = RelayClient(host, hole_punch=config.hole_punch, dial_timeout_s=config.dial_timeout_s
                        ) if config.relay_client else None
    relay_parts = ([relay_service] if relay_service else []) + (relay.services() if relay else [])
    listen = multiaddr.Multiaddr(f"/ip4/{config.listen_host}/tcp/{config.listen_port}")
    try:
        async with host.run([listen]), trio.open_nursery() as nursery:
            try:
                await nursery.start(_run_services, pubsub, dht)
                for part in relay_parts:
                    await nursery.start(_run_service, part)
                for guarded in (relay_service, relay):
                    if guarded is not None:
                        guarded.guard()
                yield P2PNode(host, config, pubsub, dht, nursery, connections, relay, relay_service)
            finally:
                nursery.cancel_scope.cancel()
                with trio.move_on_after(5) as scope:  # shutdown must finish even if wedged
                    scope.shield = True
                    await host.close()
    finally:
        if pubsub is not None:
            pubsub.seen_messages.stop()  # its sweeper is an OS thread nothing else stops


async def _run_service(service: Any, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                       ) -> None:
    async with background_trio_service(service):
        await service.event_started.wait()
        task_status.started()
        await trio.sleep_forever()


async def _run_services(pubsub: GuardedPubsub | None, dht: KadDHT,
                        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with background_trio_service(dht):
        if pubsub is None:
            task_status.started()
            await trio.sleep_forever()
        assert pubsub is not None
        router = cast(Any, pubsub.router)  # typed as IPubsubRouter; it is a GossipSub service
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            task_status.started()
            await repair_pubsub_streams(pubsub.host, pubsub)
