"""Joining the network through bootstrap nodes: DHT routing table, rendezvous advertise/discover.

:class:`Discovery` dials the bootstrap nodes, feeds the DHT routing table explicitly (it is not
filled from plain connections), advertises through rendezvous and connects to a bounded number
of the peers rendezvous returns.

Bootstrap nodes come and go (a restart loses their rendezvous registrations, which live in
memory): every second :meth:`Discovery.run` checks which bootstrap nodes it is still connected
to, re-dials the others with a per-node backoff (0.25 s doubling to 8 s), and on reconnecting
re-advertises there and discovers at once, so a restarted bootstrap knows every live provider
again within seconds.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import trio
from libp2p.discovery.rendezvous.errors import RendezvousError
from libp2p.exceptions import BaseLibp2pError  # a bootstrap dying mid-request: StreamError, ...
from libp2p.peer.peerinfo import PeerInfo

from dgpu.node.adapters.p2p import P2PNode, parse_peer_addr
from dgpu.node.errors import NetworkError, NoBootstrapReachable, PeerIdMismatchError

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["DIAL_BACKOFF_MAX_S", "DIAL_BACKOFF_S", "Discovery"]

log = logging.getLogger(__name__)

#: first and longest wait before re-dialling a discovered peer that could not be dialled
DIAL_BACKOFF_S = 20.0
DIAL_BACKOFF_MAX_S = 1800.0
#: failed peers remembered at most (a flood of dead registrations cannot grow it)
MAX_DIAL_BACKOFFS = 4096
#: a stopping provider waits at most this long to leave rendezvous
UNREGISTER_TIMEOUT_S = 2.0
#: tries per bootstrap node within that time (opening the stream can fail on a loaded machine)
UNREGISTER_TRIES = 3


def _addrs_of(info: PeerInfo) -> frozenset[str]:
    return frozenset(str(a) for a in info.addrs)


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
        #: bootstrap peer id -> (next dial at, current backoff) for those we are not connected to
        self._redial: dict[str, tuple[float, float]] = {}
        #: re-joins after a lost bootstrap connection (tests and metrics read it)
        self.rejoins = 0
        #: discovered peer id -> (next dial at, current backoff, the addresses that failed) after
        #: a failed dial: a dead provider's registration outlives it (2 h), and every node
        #: re-dialled it every round
        self._dial_backoff: dict[str, tuple[float, float, frozenset[str]]] = {}
        #: dials to discovered peers that failed (tests and metrics read it)
        self.dial_failures = 0
        #: why each bootstrap node could not be joined, last time it was tried
        self.join_errors: dict[str, NetworkError] = {}

    async def join(self) -> int:
        """Dial every bootstrap node; returns how many answered."""
        ok = 0
        for info in self.bootstraps:
            if await self._join_one(info):
                ok += 1
        if ok:
            self.joined.set()
        return ok

    async def _join_one(self, info: PeerInfo, *, retrying: bool = False) -> bool:
        from libp2p.discovery.rendezvous import RendezvousDiscovery

        try:
            await self.node.connect(info, retry_now=True)  # our own backoff paces these dials
        except NetworkError as exc:
            self.join_errors[str(info.peer_id)] = exc
            # one warning when a bootstrap node goes away; the retries that follow are routine
            log.log(logging.DEBUG if retrying else logging.WARNING,
                    "bootstrap %s unreachable: %s", info.peer_id, exc)
            return False
        self.join_errors.pop(str(info.peer_id), None)
        if self.node.dht is not None:
            # the routing table is not fed by plain connections (notes, pitfall 7)
            await self.node.dht.add_peer(info)  # type: ignore[arg-type]  # takes PeerInfo
        self._clients.setdefault(str(info.peer_id), RendezvousDiscovery(self.node.host, info.peer_id))
        return True

    async def rejoin_lost(self) -> list[str]:
        """Re-dial bootstrap nodes we lost (each on its own backoff); returns those regained."""
        connected = set(self.node.connected_peers())
        now = trio.current_time()
        regained: list[str] = []
        for info in self.bootstraps:
            pid = str(info.peer_id)
            if pid in connected:
                self._redial.pop(pid, None)
                continue
            if pid not in self._redial:
                log.warning("lost the connection to bootstrap node %s; re-dialling", pid[:16])
            due, backoff = self._redial.get(pid, (now, 0.25))
            if now < due:
                continue
            if await self._join_one(info, retrying=True):
                self._redial.pop(pid, None)
                regained.append(pid)
            else:
                self._redial[pid] = (now + backoff, min(backoff * 2, 8.0))
        if regained:
            self.rejoins += len(regained)
            log.info("re-joined bootstrap node(s) %s", ", ".join(p[:16] for p in regained))
            if self.advertise:
                await self.advertise_once(only=regained)
        return regained

    async def advertise_once(self, ttl_s: int = 7200, *, only: list[str] | None = None) -> None:
        for boot, client in list(self._clients.items()):
            if only is not None and boot not in only:
                continue
            try:
                with trio.fail_after(10):
                    await client.advertise(self.namespace, ttl=ttl_s)
            except (RendezvousError, trio.TooSlowError, BaseLibp2pError) as exc:
                log.info("rendezvous advertise at %s failed: %s", boot, type(exc).__name__)

    async def discover_once(self) -> list[str]:
        """Ask every bootstrap's rendezvous for peers; returns the new ones."""
        me = self.node.peer_id
        new: list[str] = []
        for boot, client in list(self._clients.items()):
            try:
                with trio.fail_after(10):
                    peers = await client.find_all_peers(self.namespace)
                    client.clear_cache(self.namespace)
            except (RendezvousError, trio.TooSlowError, BaseLibp2pError) as exc:
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
        """Dial discovered peers until ``max_dial_peers`` of them are connected. A peer that
        could not be dialled is left alone for a while (20 s, doubling to 30 min)."""
        connected = set(self.node.connected_peers())
        now = trio.current_time()
        have = sum(1 for p in self.known if p in connected)
        candidates = [p for p in self.known if p not in connected and not self._backing_off(p, now)]
        self._rng.shuffle(candidates)
        dialled = 0
        for pid in candidates[: max(0, self.max_dial_peers - have)]:
            info = self.known[pid]
            try:
                # the addresses it registered now replace older ones (libp2p dials only the first
                # stored), and our backoff paces these dials, not the library's 60 s block
                self.node.add_addrs(pid, [str(a) for a in info.addrs])
                await self.node.connect(info, retry_now=True)
                dialled += 1
                self._dial_backoff.pop(pid, None)
            except NetworkError as exc:
                self.dial_failures += 1
                addrs = _addrs_of(self.known.pop(pid))
                _, last, last_addrs = self._dial_backoff.pop(pid, (now, DIAL_BACKOFF_S / 2, addrs))
                backoff = min(last * 2, DIAL_BACKOFF_MAX_S) if last_addrs == addrs else DIAL_BACKOFF_S
                log.info("peer %s unreachable (next try in %.0f s): %s", pid, backoff, exc)
                # re-inserted last, so the oldest entries are the first to go
                self._dial_backoff[pid] = (trio.current_time() + backoff, backoff, addrs)
                while len(self._dial_backoff) > MAX_DIAL_BACKOFFS:
                    del self._dial_backoff[next(iter(self._dial_backoff))]
        return dialled

    def _backing_off(self, pid: str, now: float) -> bool:
        """A peer that failed to dial waits out its backoff, unless it registered new addresses
        since (a provider restarted on another port is dialled at once)."""
        entry = self._dial_backoff.get(pid)
        return entry is not None and now < entry[0] and entry[2] == _addrs_of(self.known[pid])

    async def join_with_retries(self, *, max_tries: int, max_delay_s: float) -> None:
        """Join, retrying with backoff; NoBootstrapReachable after ``max_tries`` failed rounds
        (at once when every bootstrap node answered with another peer id: retrying cannot help)."""
        delay = 0.25
        for attempt in range(1, max_tries + 1):
            if await self.join():
                return
            errors = list(self.join_errors.values())
            if errors and all(isinstance(e, PeerIdMismatchError) for e in errors):
                break
            if attempt < max_tries:
                await trio.sleep(delay)
                delay = min(delay * 2, max_delay_s)
        reasons = "; ".join(str(e) for e in self.join_errors.values()) or "no bootstrap node configured"
        raise NoBootstrapReachable(f"no bootstrap node reachable ({len(self.bootstraps)} tried): {reasons}")

    async def run(self, *, fast_rounds: int = 8, interval_s: float = 10.0,
                  readvertise_s: float = 1800.0, check_s: float = 1.0, max_join_tries: int = 8,
                  task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, advertise, then discover and dial: quickly at first, then every interval.

        Every ``check_s`` lost bootstrap nodes are re-dialled (:meth:`rejoin_lost`); a regained
        one triggers an advertisement there and a discovery round at once. Registrations are
        renewed every ``readvertise_s`` (their TTL is 7200 s). A node that cannot join at all
        (``max_join_tries`` rounds, about 30 s) raises :class:`NoBootstrapReachable`. An
        advertising node withdraws its registrations when it stops."""
        await self.join_with_retries(max_tries=max_join_tries, max_delay_s=interval_s)
        if self.advertise:
            await self.advertise_once()
        task_status.started()
        try:
            await self._rounds(fast_rounds, interval_s, readvertise_s, check_s)
        finally:
            if self.advertise:  # a provider that stops leaves rendezvous: nobody dials it for 2 h
                with trio.CancelScope(shield=True), trio.move_on_after(UNREGISTER_TIMEOUT_S):
                    await self.unadvertise()

    async def unadvertise(self) -> None:
        """Withdraw our rendezvous registrations at each bootstrap node, retrying a failed try
        (:data:`UNREGISTER_TRIES`); failures are only logged: the registration expires anyway."""
        for boot, client in list(self._clients.items()):
            for attempt in range(1, UNREGISTER_TRIES + 1):
                try:
                    await client.unregister(self.namespace)
                    break
                except (RendezvousError, BaseLibp2pError, NetworkError, trio.BrokenResourceError,
                        trio.ClosedResourceError) as exc:
                    log.info("rendezvous unregister at %s failed (try %d of %d): %s", boot[:16], attempt,
                             UNREGISTER_TRIES, type(exc).__name__)
                    if attempt < UNREGISTER_TRIES:
                        await trio.sleep(0.1 * attempt)

    async def _rounds(self, fast_rounds: int, interval_s: float, readvertise_s: float, check_s: float) -> None:
        rounds = 0
        last_advert = next_discovery = trio.current_time()
        while True:
            if await self.rejoin_lost():
                next_discovery = trio.current_time()
            if trio.current_time() >= next_discovery:
                await self.discover_once()
                await self.connect_some()
                rounds += 1
                # fast rounds let a fresh network form in seconds; then settle down
                next_discovery = trio.current_time() + (0.5 if rounds < fast_rounds else interval_s)
            if self.advertise and trio.current_time() - last_advert > readvertise_s:
                await self.advertise_once()
                last_advert = trio.current_time()
            await trio.sleep(min(check_s, max(0.0, next_discovery - trio.current_time())) or 0.05)
