"""Joining the network through bootstrap nodes: DHT routing table, rendezvous advertise/discover.

:class:`Discovery` dials the bootstrap nodes, feeds the DHT routing table explicitly (it is not
filled from plain connections), advertises through rendezvous and connects to a bounded number
of the peers rendezvous returns.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import trio
from libp2p.host.exceptions import StreamFailure
from libp2p.network.exceptions import SwarmException
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from dgpu.node.adapters.p2p import P2PNode, parse_peer_addr
from dgpu.node.errors import NetworkError

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["Discovery"]

log = logging.getLogger(__name__)


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
