"""Am I publicly dialable? A dial-back by bootstrap nodes, and what a provider does about it.

Why our own protocol and not py-libp2p 0.8.1's AutoNAT: its server "dials back" with
``host.connect``, which returns at once when a connection to the peer exists, and the peer asking
is always connected to the server, so every answer is "reachable"; it also wants four servers
to agree (``CONFIRMATIONS_REQUIRED = 4``) before it says anything, more bootstrap nodes than a
small dGPU network has. ``/dgpu/reachability/1.0.0`` is one request and one answer, both JSON
frames, version in the body:

- request ``{"v": 1, "ports": [tcp ports we listen on]}`` (at most 4);
- the server opens a *new* TCP connection to each port at the IP the request came from (never
  another IP: no amplification, no port scans for third parties), expects the multistream-select
  header a libp2p listener answers with, and replies
  ``{"v": 1, "observed": ip, "reachable": [...], "unreachable": [...]}``.

:class:`NatTraversal` runs it: in ``auto`` it asks the bootstrap nodes it is connected to
(every 2 s until one answers, then every ``recheck_s``); "public" when any reached us, "private"
when those that answered all failed. While not public a provider keeps reservations on up to two
relays (:meth:`RelayClient.maintain`) and advertises only its ``/p2p-circuit`` addresses; when it
becomes public it drops them. ``public`` / ``private`` skip detection.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from dgpu.node.adapters.p2p import P2PNode, parse_peer_addr
from dgpu.node.adapters.p2p_relay import is_circuit
from dgpu.node.errors import ConfigError, NetworkError
from dgpu.node.ports.network import FramedStream as StreamLike

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["REACHABILITY_PROTOCOL", "NatTraversal", "probe", "serve_dialback"]

log = logging.getLogger(__name__)

REACHABILITY_PROTOCOL = "/dgpu/reachability/1.0.0"
VERSION = 1
MODES = ("auto", "public", "private")
_MAX_PORTS = 4
_FRAME_BYTES = 1024
_DIAL_TIMEOUT_S = 3.0
_MULTISTREAM = b"\x13/multistream/1.0.0\n"


def _remote_ip(fs: Any) -> str | None:
    with contextlib.suppress(Exception):  # relayed streams have no remote socket address
        remote = fs.raw.get_remote_address()
        if remote:
            return str(remote[0])
    return None


async def _dial_back(ip: str, port: int) -> bool:
    """A fresh TCP connection to ``ip:port`` that answers like a libp2p listener."""
    with trio.move_on_after(_DIAL_TIMEOUT_S):
        try:
            stream = await trio.open_tcp_stream(ip, port)
        except OSError:
            return False
        async with stream:
            try:
                await stream.send_all(_MULTISTREAM)
                got = b""
                while len(got) < len(_MULTISTREAM):
                    chunk = await stream.receive_some(len(_MULTISTREAM) - len(got))
                    if not chunk:
                        break
                    got += chunk
                return got == _MULTISTREAM
            except (OSError, trio.BrokenResourceError):
                return False
    return False


def serve_dialback(node: P2PNode) -> None:
    """Answer dial-back requests (bootstrap nodes)."""

    async def handle(fs: StreamLike) -> None:
        try:
            req = json.loads(await fs.read_frame())
            ports = [int(p) for p in req["ports"]][:_MAX_PORTS]
        except (ValueError, KeyError, TypeError):
            await fs.write_frame(json.dumps({"v": VERSION, "error": "bad request"}).encode())
            return
        ip = _remote_ip(fs)
        if ip is None:
            await fs.write_frame(json.dumps({"v": VERSION, "error": "no address"}).encode())
            return
        ok = [p for p in ports if 0 < p < 65536 and await _dial_back(ip, p)]
        await fs.write_frame(json.dumps({"v": VERSION, "observed": ip, "reachable": ok,
                                         "unreachable": [p for p in ports if p not in ok]}).encode())

    node.set_handler(REACHABILITY_PROTOCOL, handle, max_frame_bytes=_FRAME_BYTES,
                     read_timeout_s=5.0, handler_timeout_s=5.0 + _MAX_PORTS * _DIAL_TIMEOUT_S)


def listen_ports(node: P2PNode) -> list[int]:
    ports: list[int] = []
    for a in node.host.get_addrs():
        if is_circuit(str(a)):
            continue
        with contextlib.suppress(Exception):  # addresses without tcp
            ports.append(int(a.value_for_protocol("tcp")))
    return sorted(set(ports))[:_MAX_PORTS]


async def probe(node: P2PNode, server: str) -> dict[str, Any] | None:
    """Ask ``server`` to dial us back; its answer, or None when it gave none."""
    try:
        fs = await node.open_stream(server, REACHABILITY_PROTOCOL, max_frame_bytes=_FRAME_BYTES,
                                    read_timeout_s=5.0 + _MAX_PORTS * _DIAL_TIMEOUT_S)
    except NetworkError as exc:
        log.debug("no dial-back from %s: %s", server[:16], exc)
        return None
    try:
        await fs.write_frame(json.dumps({"v": VERSION, "ports": listen_ports(node)}).encode())
        answer = json.loads(await fs.read_frame())
    except (NetworkError, ValueError) as exc:
        log.debug("no dial-back from %s: %s", server[:16], exc)
        return None
    finally:
        await fs.close()
    if not isinstance(answer, dict) or answer.get("v") != VERSION or "reachable" not in answer:
        return None
    return answer


class NatTraversal:
    """Reachability (dial-back) and, for a provider that is not reachable, relay reservations."""

    def __init__(self, node: P2PNode, bootstraps: list[str], *, mode: str | None = None,
                 reserve: bool = True, want_relays: int = 2, recheck_s: float = 300.0,
                 on_addrs_changed: Callable[[], Awaitable[None]] | None = None) -> None:
        mode = mode or node.config.reachability
        if mode not in MODES:
            raise ConfigError(f"reachability must be one of {', '.join(MODES)}")
        self.node = node
        self.bootstraps = [(parse_peer_addr(b), b) for b in bootstraps]
        self.mode = mode
        self.reserve = reserve
        self.want_relays = want_relays
        self.recheck_s = recheck_s
        self.on_addrs_changed = on_addrs_changed
        #: "public", "private" or "unknown" (not decided yet: treated as not reachable)
        self.status = {"auto": "unknown"}.get(mode, mode)
        self.observed_ip: str | None = None
        self.decided = trio.Event()
        self.undecided_s = 10.0
        self._started = trio.current_time()
        if mode != "auto":
            self.decided.set()
        if node.relay is not None:
            node.relay.use_relays(bootstraps)

    def wants_relays(self) -> bool:
        """Reserve while private, or while undecided for longer than ``undecided_s`` (e.g.
        bootstrap nodes that do not speak the dial-back protocol)."""
        return self.status == "private" or (
            self.status == "unknown" and trio.current_time() - self._started > self.undecided_s)

    def _set(self, status: str) -> None:
        if status != self.status:
            log.info("reachability: %s (was %s)", status, self.status)
        self.status = status
        self.decided.set()

    async def check_once(self) -> bool:
        """Ask every connected bootstrap node; True when at least one answered."""
        connected = set(self.node.connected_peers())
        answers = [a for info, _ in self.bootstraps if str(info.peer_id) in connected
                   if (a := await probe(self.node, str(info.peer_id))) is not None]
        if not answers:
            return False
        self.observed_ip = str(answers[0].get("observed") or "") or None
        self._set("public" if any(a["reachable"] for a in answers) else "private")
        return True

    async def _detect(self) -> None:
        while True:
            answered = await self.check_once()
            await trio.sleep(self.recheck_s if answered else 2.0)

    async def _watch_addrs(self) -> None:
        relay = self.node.relay
        assert relay is not None
        while True:
            await relay.changed.wait()
            if self.on_addrs_changed is not None:
                try:
                    await self.on_addrs_changed()
                except NetworkError as exc:
                    log.warning("could not announce our new addresses: %s", exc)

    async def run(self, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Detect (``auto``) and reserve while not reachable; renters (``reserve=False``) only
        learn the relays to fall back on."""
        self._started = trio.current_time()
        async with trio.open_nursery() as nursery:
            relay = self.node.relay
            if self.reserve and relay is not None and self.bootstraps:
                if self.mode == "auto":
                    nursery.start_soon(self._detect)
                nursery.start_soon(self._watch_addrs)
                nursery.start_soon(relay.maintain, self.bootstraps, self.wants_relays,
                                   self.want_relays)
            task_status.started()
