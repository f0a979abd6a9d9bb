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
:class:`Discovery` joins through bootstrap nodes: it dials them, feeds the DHT routing table
explicitly (it is not filled from plain connections), advertises through rendezvous and
connects to a bounded number of the peers rendezvous returns.
"""

from __future__ import annotations

import contextlib
import logging
import random
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
from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.adapters.p2p_pubsub import GossipConfig, GuardedPubsub, build_gossip, gossip_message
from dgpu.node.errors import (
    CapacityError,
    ConfigError,
    DialError,
    NetworkError,
    PeerRefusedError,
)
from dgpu.node.ports.network import GossipMessage, StreamHandler, TopicValidator, Verdict
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.peers import peer_id_of_wallet, wallet_of_peer

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = [
    "Discovery",
    "P2PConfig",
    "P2PNode",
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
    #: total connections; a renter needs a few providers, a provider a mesh of ~6-12
    max_connections: int = 64
    #: concurrent inbound streams of our own protocols from one peer (a renter runs a few jobs)
    max_inbound_streams_per_peer: int = 8
    #: concurrent inbound streams of our own protocols in total (each holds a task + buffers)
    max_inbound_streams_total: int = 128
    #: how long a dial may take on loopback/WAN before we call the peer unreachable
    dial_timeout_s: float = 10.0
    #: an inbound handler that has not finished by then is cancelled (jobs set their own)
    default_handler_timeout_s: float = 30.0


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


class _StreamLimiter:
    """Counts our inbound streams per peer and in total (bounds in P2PConfig)."""

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


class P2PNode:
    """A running host. Created by :func:`open_node`; valid only inside its ``async with``."""

    def __init__(self, host: Any, config: P2PConfig, pubsub: GuardedPubsub | None,
                 dht: KadDHT | None, nursery: trio.Nursery) -> None:
        self.host = host
        self.config = config
        self.pubsub = pubsub
        self.dht = dht
        self._nursery = nursery
        self._limiter = _StreamLimiter(config.max_inbound_streams_per_peer,
                                       config.max_inbound_streams_total)
        #: streams refused because a bound was full (tests and metrics read it)
        self.refused_streams = 0

    # ---- identity and addresses ----
    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/ID``) the host listens on."""
        return [str(a) for a in self.host.get_addrs()]

    @property
    def multiaddr(self) -> str:
        return self.addrs[0]

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self.host.get_connected_peers()]

    # ---- connections and streams ----
    async def connect(self, addr: str | PeerInfo) -> str:
        """Dial a peer (no-op when connected); DialError if it cannot be reached."""
        info = parse_peer_addr(addr) if isinstance(addr, str) else addr
        if info.peer_id == self.host.get_id():
            return str(info.peer_id)
        if len(self.host.get_connected_peers()) >= self.config.max_connections and (
            info.peer_id not in self.host.get_connected_peers()
        ):
            raise CapacityError("connection cap reached")
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                await self.host.connect(info)
        except trio.TooSlowError:
            raise DialError(f"dialling {info.peer_id} timed out") from None
        except (SwarmException, OSError, MultiselectClientError) as exc:
            raise DialError(f"cannot reach {info.peer_id}: {type(exc).__name__}") from exc
        return str(info.peer_id)

    def add_addrs(self, peer: str, addrs: list[str], ttl_s: int = 600) -> None:
        """Teach the peerstore where a peer listens (e.g. from its offer)."""
        pid = _peer_id(peer)
        mas = []
        for a in addrs:
            try:
                mas.append(multiaddr.Multiaddr(a.split("/p2p/")[0]))
            except Exception:  # malformed address from the wire: skip it
                continue
        if mas:
            self.host.get_peerstore().add_addrs(pid, mas, ttl_s)

    async def open_stream(self, peer: str, protocol: str, *, max_frame_bytes: int,
                          read_timeout_s: float) -> FramedStream:
        """A new stream to ``peer`` (dialled if needed), wrapped in frames."""
        pid = _peer_id(peer)
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
        """Serve ``protocol``. The handler gets a FramedStream; it is closed afterwards."""
        limit_s = handler_timeout_s or self.config.default_handler_timeout_s

        async def guarded(raw: Any) -> None:
            peer = str(raw.muxed_conn.peer_id)
            if not self._limiter.try_acquire(peer):
                self.refused_streams += 1
                log.info("refusing a %s stream from %s: inbound stream bound reached",
                         protocol, peer)
                await FramedStream(raw, max_frame_bytes=1, read_timeout_s=1).reset()
                return
            fs = FramedStream(raw, remote_peer=peer, max_frame_bytes=max_frame_bytes,
                              read_timeout_s=read_timeout_s)
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
                self._limiter.release(peer)
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


def _guard_foreign_handler(host: Any, protocol: str, timeout_s: float) -> None:
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


def _disable_auto_connector(host: Any) -> None:
    """0.8.1's auto-connector dials up to 32 peerstore entries on its own: discovery decides."""

    async def _not_started() -> None:
        return None

    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        connector.start = _not_started  # leaves _started False, so maybe_connect is a no-op


@asynccontextmanager
async def open_node(key: SigningKey, config: P2PConfig) -> AsyncIterator[P2PNode]:
    """Start a host with ``key`` as its identity; close everything on exit."""
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
    _disable_auto_connector(host)
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
        _guard_foreign_handler(host, str(RENDEZVOUS_PROTOCOL), 30.0)
    listen = multiaddr.Multiaddr(f"/ip4/{config.listen_host}/tcp/{config.listen_port}")
    try:
        async with host.run([listen]), trio.open_nursery() as nursery:
            try:
                await nursery.start(_run_services, pubsub, dht)
                yield P2PNode(host, config, pubsub, dht, nursery)
            finally:
                nursery.cancel_scope.cancel()
                with trio.move_on_after(5) as scope:  # shutdown must finish even if wedged
                    scope.shield = True
                    await host.close()
    finally:
        if pubsub is not None:
            pubsub.seen_messages.stop()  # its sweeper is an OS thread nothing else stops


async def _repair_pubsub_streams(host: Any, pubsub: GuardedPubsub) -> None:
    """Re-open pubsub streams to connected peers that lost theirs.

    When two nodes dial each other at once, one of the two connections is closed; a pubsub
    stream opened on it dies with it while the peer stays connected, and 0.8.1 never
    notices. Such a pair exchanges no gossip: at 30 nodes offers stopped reaching everyone.
    """
    wanted = {str(p) for p in pubsub.protocols}
    store = host.get_peerstore()
    while True:
        await trio.sleep(2)
        for pid in list(host.get_connected_peers()):
            if pid in pubsub.peers or pubsub.is_peer_blacklisted(pid):
                continue
            try:
                speaks = wanted & {str(p) for p in store.get_protocols(pid)}
            except Exception:  # peerstore raises for peers identify has not filled yet
                continue
            if speaks:  # e.g. a bootstrap node speaks no pubsub: leave it alone
                pubsub.repairs += 1
                pubsub._schedule_peer_stream_retry(pid)


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
            await _repair_pubsub_streams(pubsub.host, pubsub)


class Discovery:
    """Join through bootstrap nodes: DHT routing table, rendezvous advertise and discover."""

    def __init__(self, node: P2PNode, bootstraps: list[str], namespace: str, *,
                 advertise: bool, max_dial_peers: int = 8, rng: random.Random | None = None,
                 ) -> None:
        self.node = node
        self.bootstraps = [parse_peer_addr(b) for b in bootstraps]
        self.namespace = namespace
        self.advertise = advertise
        #: outbound dials to discovered peers; gossipsub wants D=6, the rest comes inbound
        self.max_dial_peers = max_dial_peers
        self._rng = rng or random.Random()
        self._clients: dict[str, Any] = {}
        #: peers learnt from rendezvous (peer id → PeerInfo), excluding ourselves
        self.known: dict[str, PeerInfo] = {}
        self.joined = trio.Event()

    async def join(self) -> int:
        """Dial every bootstrap node; returns how many answered."""
        from libp2p.discovery.rendezvous import RendezvousDiscovery

        ok = 0
        for info in self.bootstraps:
            try:
                await self.node.connect(info)
            except NetworkError as exc:
                log.warning("bootstrap %s unreachable: %s", info.peer_id, exc)
                continue
            ok += 1
            if self.node.dht is not None:
                # the routing table is not fed by plain connections (notes, pitfall 7)
                await self.node.dht.add_peer(info)  # type: ignore[arg-type]  # takes PeerInfo
            self._clients.setdefault(str(info.peer_id),
                                     RendezvousDiscovery(self.node.host, info.peer_id))
        if ok:
            self.joined.set()
        return ok

    async def advertise_once(self, ttl_s: int = 7200) -> None:
        from libp2p.discovery.rendezvous.errors import RendezvousError

        for boot, client in list(self._clients.items()):
            try:
                with trio.fail_after(10):
                    await client.advertise(self.namespace, ttl=ttl_s)
            except (RendezvousError, trio.TooSlowError, SwarmException, StreamFailure,
                    MultiselectClientError) as exc:
                log.info("rendezvous advertise at %s failed: %s", boot, type(exc).__name__)

    async def discover_once(self) -> list[str]:
        """Ask every bootstrap's rendezvous for peers; returns the new ones."""
        from libp2p.discovery.rendezvous.errors import RendezvousError

        me = self.node.peer_id
        new: list[str] = []
        for boot, client in list(self._clients.items()):
            try:
                with trio.fail_after(10):
                    peers = await client.find_all_peers(self.namespace)
                    client.clear_cache(self.namespace)
            except (RendezvousError, trio.TooSlowError, SwarmException, StreamFailure,
                    MultiselectClientError) as exc:
                log.info("rendezvous discover at %s failed: %s", boot, type(exc).__name__)
                continue
            for info in peers:
                pid = str(info.peer_id)
                if pid == me or not info.addrs:
                    continue
                if pid not in self.known:
                    new.append(pid)
                self.known[pid] = info
        return new

    async def connect_some(self) -> int:
        """Dial discovered peers until ``max_dial_peers`` of them are connected."""
        connected = set(self.node.connected_peers())
        have = sum(1 for p in self.known if p in connected)
        candidates = [p for p in self.known if p not in connected]
        self._rng.shuffle(candidates)
        dialled = 0
        for pid in candidates[: max(0, self.max_dial_peers - have)]:
            try:
                await self.node.connect(self.known[pid])
                dialled += 1
            except NetworkError as exc:
                log.info("peer %s unreachable: %s", pid, exc)
                self.known.pop(pid, None)
        return dialled

    async def run(self, *, fast_rounds: int = 8, interval_s: float = 10.0,
                  task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, advertise, then discover and dial: quickly at first, then every interval."""
        delay = 0.25
        while not await self.join():
            await trio.sleep(delay)
            delay = min(delay * 2, interval_s)
        if self.advertise:
            await self.advertise_once()
        task_status.started()
        rounds = 0
        last_advert = trio.current_time()
        while True:
            await self.discover_once()
            await self.connect_some()
            rounds += 1
            if self.advertise and trio.current_time() - last_advert > 3600:
                await self.advertise_once()
                last_advert = trio.current_time()
            # fast rounds let a fresh network form in seconds; then settle down
            await trio.sleep(0.5 if rounds < fast_rounds else interval_s)
