"""The network port: framed streams, gossip publish/subscribe and peer lookups.

``adapters.p2p.P2PNode`` (py-libp2p) implements :class:`Network`; tests drive services over
in-memory streams instead. Peers are base58 libp2p peer IDs; a peer's wallet is the same key
(``dgpu.protocol.peers``). Every read has a deadline and every frame a size limit, set by the
caller per protocol (see :meth:`Network.open_stream` and :meth:`Network.set_handler`).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "FramedStream",
    "GossipMessage",
    "Network",
    "StreamHandler",
    "TopicValidator",
    "Verdict",
]


class Verdict(enum.Enum):
    """A topic validator's answer (gossipsub v1.1's accept / ignore / reject)."""

    ACCEPT = "accept"
    """Deliver locally and forward."""
    IGNORE = "ignore"
    """Drop without blame: valid but not useful (e.g. an older seq arriving out of order)."""
    REJECT = "reject"
    """Drop and count against the forwarder's score (P4): forged, expired, malformed."""


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """What a topic validator sees: the origin (signed by libp2p) and the payload."""

    topic: str
    #: base58 peer ID of the origin (``from``); its libp2p signature was checked
    origin: str
    #: the origin's raw 32-byte Ed25519 key (the same key as its wallet), or None
    origin_key: bytes | None
    #: base58 peer ID of the peer that handed it to us
    forwarder: str
    data: bytes


#: decides synchronously what is accepted (and relayed): ACCEPT/True, IGNORE, or REJECT/False
TopicValidator = Callable[[GossipMessage], "bool | Verdict"]


class FramedStream(Protocol):
    """Length-prefixed frames on one stream (``adapters.p2p_framing.FramedStream``).

    Errors are ``dgpu.node.errors``: ``ReadTimeoutError`` (the stream is still usable),
    ``FrameTooLargeError`` and ``StreamClosedError`` (it is dead)."""

    #: base58 peer ID of the other side; "" for in-memory streams
    remote_peer: str

    async def read_frame(self, *, timeout_s: float | None = None, max_bytes: int | None = None) -> bytes:
        """One frame's payload, within the deadline and the size limit."""
        ...

    async def write_frame(self, payload: bytes) -> None:
        """Send one frame (frames of concurrent writers never interleave)."""
        ...

    async def close(self) -> None:
        """Close our side; never raises."""
        ...

    async def reset(self) -> None:
        """Abort the stream; never raises."""
        ...


#: serves one inbound stream; the stream is closed when it returns
StreamHandler = Callable[[FramedStream], Awaitable[None]]


class Network(Protocol):
    """The peer-to-peer host as the services see it."""

    @property
    def peer_id(self) -> str: ...

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/ID``) this node listens on."""
        ...

    def connected_peers(self) -> list[str]: ...

    def add_addrs(self, peer: str, addrs: list[str], ttl_s: int = 600) -> None:
        """Where a peer listens now (e.g. from its newest offer); replaces what was known."""
        ...

    async def open_stream(self, peer: str, protocol: str, *, max_frame_bytes: int,
                          read_timeout_s: float) -> FramedStream:
        """A new stream to ``peer`` (dialled if needed); ``NetworkError`` if it cannot be opened."""
        ...

    def set_handler(self, protocol: str, handler: StreamHandler, *, max_frame_bytes: int,
                    read_timeout_s: float, handler_timeout_s: float | None = None) -> None:
        """Serve ``protocol`` (bounded: per-peer and total inbound streams, a handler deadline)."""
        ...

    async def ping(self, peer: str, *, timeout_s: float = 5.0) -> bool:
        """True when ``peer`` answers within ``timeout_s`` (liveness check)."""
        ...

    async def subscribe(self, topic: str, validator: TopicValidator,
                        on_message: Callable[[GossipMessage], None] | None = None) -> None:
        """Join ``topic``; ``validator`` is the gate for what is stored and relayed."""
        ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish on ``topic``; ``NetworkError`` when it cannot be sent."""
        ...

    def topic_peers(self, topic: str) -> list[str]:
        """Peers we know are subscribed to ``topic``."""
        ...
