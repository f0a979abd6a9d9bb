"""Bounds on slow and greedy HTTP clients, enforced per connection inside uvicorn's h11 protocol.

Theory of operation: every connection is, on its reading side, in one of three phases, read from
its h11 state machine after each event: HEAD (waiting for a request head: a new connection, or
an idle keep-alive one), BODY (the head is in, the request body is arriving) or OTHER (the
request is read and the app answers: no read deadline). A timer per connection enforces:

- HEAD: the head must be complete within ``header_timeout_s`` of entering the phase; a client
  that sent part of a head gets ``408 header_timeout``, one that sent nothing is closed quietly.
- BODY: a byte at least every ``body_timeout_s``, and at least ``min_upload_rate`` bytes/s
  averaged over each ``upload_rate_window_s``; otherwise ``408 body_timeout`` /
  ``408 upload_too_slow`` and the connection is closed (the app's ``receive`` then reports a
  disconnect, so nothing half-uploaded is kept). The clock stops while the client may not send:
  the server paused reading (the app has not consumed what it was sent) or the client waits
  for ``100 Continue``.

Admission (``ConnectionGuard``): at most ``max_connections`` open connections and at most
``max_connections_per_address`` from one client address. A newcomer over a bound takes the place
of the longest-waiting HEAD connection (of that address, or of anyone for the total): a crowd of
connections that never send a request cannot lock out one that does. When every connection
over the bound is busy with a request, the newcomer gets ``503 too_many_connections``. A
connection's share is released when it closes, is evicted, or is upgraded to a WebSocket.
"""

from __future__ import annotations

import asyncio
import enum
import http
import json
import logging
from collections import OrderedDict
from typing import Any, ClassVar

import h11
from pydantic import BaseModel, ConfigDict, Field
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._errors import error_body

__all__ = ["ConnectionGuard", "ConnectionLimits", "GuardedH11Protocol", "guarded_protocol"]

log = logging.getLogger(__name__)


class ConnectionLimits(BaseModel):
    """Per-server bounds against slow and greedy clients (defaults fit the bootstrap and the node)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: seconds a request head may take to arrive (from the connection's start or the last answer)
    header_timeout_s: float = Field(default=15.0, gt=0)
    #: seconds a request body may go without a byte
    body_timeout_s: float = Field(default=30.0, gt=0)
    #: bytes/s a request body must average over each window; 0 turns the check off
    min_upload_rate: int = Field(default=500, ge=0)
    upload_rate_window_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=1024, gt=0)
    max_connections_per_address: int = Field(default=128, gt=0)


class _Phase(enum.Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    BODY = "body"  # the request body is arriving
    OTHER = "other"  # the request is read (or the connection is closing): no read deadline


def _raw_error(status: int, code: str, message: str) -> bytes:
    """A complete ``connection: close`` error response, for answers outside the app's cycle."""
    body = json.dumps(error_body(code, message)).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ConnectionGuard:
    """The open connections of one server, counted in total and per client address; the
    connections waiting for a request head, oldest first (the ones a newcomer may displace)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self._per_address: dict[str, int] = {}
        self._waiting: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        self._waiting_by_address: dict[str, OrderedDict[GuardedH11Protocol, None]] = {}

    def admit(self, conn: GuardedH11Protocol) -> str | None:
        """Count ``conn`` in, displacing a waiting connection if a bound is reached; the reason
        code if it cannot be admitted (then nothing was counted)."""
        address = conn.address
        if self._per_address.get(address, 0) >= self.limits.max_connections_per_address:
            mine = self._waiting_by_address.get(address)
            if not mine:
                return "too_many_connections_from_address"
            next(iter(mine)).evict()
        if self.total >= self.limits.max_connections:
            if not self._waiting:
                return "too_many_connections"
            next(iter(self._waiting)).evict()
        self.total += 1
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return None

    def release(self, conn: GuardedH11Protocol) -> None:
        self.busy(conn)
        self.total -= 1
        left = self._per_address[conn.address] - 1
        if left:
            self._per_address[conn.address] = left
        else:
            del self._per_address[conn.address]

    def waiting(self, conn: GuardedH11Protocol) -> None:
        """``conn`` now waits for a request head (it goes to the back of the displacement order)."""
        self.busy(conn)
        self._waiting[conn] = None
        self._waiting_by_address.setdefault(conn.address, OrderedDict())[conn] = None

    def busy(self, conn: GuardedH11Protocol) -> None:
        """``conn`` is reading or answering a request: it is not displaced."""
        if conn not in self._waiting:
            return
        del self._waiting[conn]
        mine = self._waiting_by_address[conn.address]
        del mine[conn]
        if not mine:
            del self._waiting_by_address[conn.address]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the read deadlines and admission of the module docstring.

    A subclass per server carries its ``guard`` (see ``guarded_protocol``)."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address = "unknown"
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._phase = _Phase.OTHER
        self._since = 0.0  # when the current phase (HEAD) or rate window (BODY) began
        self._head_bytes = 0  # bytes of the head received in this HEAD phase
        self._last_byte = 0.0  # BODY: when the last body byte arrived (or the clock restarted)
        self._window_bytes = 0  # BODY: body bytes in the current rate window

    # -- uvicorn's protocol interface ------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.address = self.client[0] if self.client else "unknown"
        refusal = self.guard.admit(self)
        if refusal is not None:
            log.info("refused a connection from %s: %s", self.address, refusal)
            self.transport.write(_raw_error(503, refusal, "too many open connections; try again later"))
            self._close()
            return
        self._admitted = True
        self._observe()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._admitted:
            return
        now = self.loop.time()
        if self._phase is _Phase.HEAD:
            self._head_bytes += len(data)
        self._observe()
        if self._phase is _Phase.BODY:
            self._window_bytes += len(data)
            self._last_byte = now

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._admitted:
            self._observe()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._leave()  # the WebSocket protocol owns the transport from here
        super().handle_websocket_upgrade(event)

    # -- the guard -------------------------------------------------------------------------------

    def evict(self) -> None:
        """Close this waiting connection quietly to make room for a newcomer."""
        log.debug("closing a connection from %s that sent no request, to admit another", self.address)
        self._leave()
        self._close()

    def _leave(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._admitted:
            self._admitted = False
            self.guard.release(self)

    def _current_phase(self) -> _Phase:
        if self.transport.is_closing():
            return _Phase.OTHER
        state = self.conn.their_state
        if state is h11.IDLE:
            return _Phase.HEAD
        if state is h11.SEND_BODY:
            return _Phase.BODY
        return _Phase.OTHER

    def _follow(self) -> bool:
        """Follow a phase change (restart the phase's clock, move in the guard); True if any."""
        phase = self._current_phase()
        if phase is self._phase:
            return False
        self._phase = phase
        now = self.loop.time()
        if phase is _Phase.HEAD:
            self._since, self._head_bytes = now, 0
            self.guard.waiting(self)
        else:
            self.guard.busy(self)
            self._restart_body_clock(now)
        return True

    def _observe(self) -> None:
        if self._follow():
            self._tick()

    def _restart_body_clock(self, now: float) -> None:
        self._since = self._last_byte = now
        self._window_bytes = 0

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(max(delay, 0.0), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self._admitted:
            return
        limits = self.guard.limits
        self._follow()  # a change h11 made inside uvicorn's handler, without a hook of ours
        now = self.loop.time()
        if self._phase is _Phase.HEAD:
            left = self._since + limits.header_timeout_s - now
            if left > 0:
                self._arm(left)
            elif self._head_bytes:
                self._refuse("header_timeout", f"the request head took over {limits.header_timeout_s:g} s",
                             answer=True)
            else:
                self.evict()
        elif self._phase is _Phase.BODY:
            if self.flow.read_paused or self.conn.they_are_waiting_for_100_continue:
                # The client may not send now: the clock restarts; look again soon.
                self._restart_body_clock(now)
                self._arm(min(limits.upload_rate_window_s, limits.body_timeout_s) / 10)
                return
            idle_left = self._last_byte + limits.body_timeout_s - now
            if idle_left <= 0:
                self._refuse("body_timeout", f"no byte of the request body for {limits.body_timeout_s:g} s")
                return
            elapsed = now - self._since
            if elapsed >= limits.upload_rate_window_s:
                if self._window_bytes < limits.min_upload_rate * elapsed:
                    self._refuse("upload_too_slow",
                                 f"request bodies must arrive at {limits.min_upload_rate} bytes/s or faster")
                    return
                self._since, self._window_bytes, elapsed = now, 0, 0.0
            self._arm(min(idle_left, limits.upload_rate_window_s - elapsed))

    def _refuse(self, code: str, message: str, *, answer: bool = False) -> None:
        """Answer 408 (in BODY, unless the app already answered) and close; the app's
        ``receive`` then reports a disconnect."""
        log.info("closing a slow connection from %s: %s", self.address, code)
        if answer or self.cycle is None or not self.cycle.response_started:
            self.transport.write(_raw_error(408, code, message))
        self._leave()
        self._close()

    def _close(self) -> None:
        # uvicorn counts a connection against its own limit until connection_lost, a loop turn or
        # more after the close; one this guard has let go must not count there meanwhile.
        self.connections.discard(self)
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class for one server: its connections share one ``ConnectionGuard``."""
    guard = ConnectionGuard(limits)
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
