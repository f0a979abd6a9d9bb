"""One job's event record on the provider, and the loop that streams it to a renter.

Why: a batch job outlives its renter's stream (``/dgpu/job``), so the job task writes its
events into a :class:`JobFeed` and each renter stream (the submit one, later re-attach ones)
is a reader of it with its own cursor (:func:`stream_feed`). Rules:

- statuses and usage receipts are kept whole (a handful; receipts bounded like the renter's
  session keeps them); log chunks in a ring of at most ``max_log_chars`` characters, each with
  its seq, so a re-attach names the offset it resumes at;
- a log chunk a connected reader has not been sent yet is never dropped: the job's log pump
  waits for the slowest reader (the backpressure a single stream gave), and drops the oldest
  chunks only when nobody is reading (the renter is away);
- an ended feed is kept :data:`FEED_RETENTION_S` (the result's retention) then forgotten;
  :class:`FeedTable` also bounds how many ended feeds it keeps.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import trio

from dgpu.node.ports.network import FramedStream
from dgpu.protocol.job_frames import HEARTBEAT_INTERVAL_S, JobHeartbeat
from dgpu.protocol.job_session import MAX_KEPT_RECEIPTS
from dgpu.protocol.keys import PublicKey
from dgpu.protocol.messages import JobState, JobStatus, LogChunk, ResultRef, UsageReceipt

__all__ = ["FEED_RETENTION_S", "FeedTable", "JobFeed", "stream_feed"]

#: how long an ended job's feed (statuses, last logs) and its result stay on the provider for a
#: renter that re-attaches: a day covers a laptop asleep overnight; the result blob has the same TTL
FEED_RETENTION_S: Final = 24 * 3600.0
#: log characters kept per job (the tail a re-attaching renter can still get)
MAX_FEED_LOG_CHARS: Final = 1024 * 1024
#: ended feeds kept at most (memory: this many times MAX_FEED_LOG_CHARS at worst)
MAX_ENDED_FEEDS: Final = 128


class JobFeed:
    """The events of one job, in order; one writer (the job task), any number of readers."""

    def __init__(self, job_id: str, renter: PublicKey, *, peer: str, stop_on_disconnect: bool,
                 max_log_chars: int = MAX_FEED_LOG_CHARS) -> None:
        self.job_id = job_id
        #: the renter's peer at submit (the job's inputs are fetched from it)
        self.peer = peer
        #: the agreement's renter: the only key that may re-attach or cancel
        self.renter = renter
        self.stop_on_disconnect = stop_on_disconnect
        self.max_log_chars = max_log_chars
        self.statuses: list[JobStatus] = []
        self.logs: deque[LogChunk] = deque()
        self._log_chars = 0
        #: the seq the next log chunk gets (every chunk below it was added, some maybe dropped)
        self.next_log_seq = 0
        self.receipts: list[UsageReceipt] = []
        self.minutes = 0
        self.result: ResultRef | None = None
        #: no event will follow (the final status and the result, if any, are in)
        self.closed = False
        #: wall time the feed was closed (its retention counts from it)
        self.closed_at: float | None = None
        #: stops the job whatever its state (set by the job server)
        self.stop: Callable[[str], Awaitable[None]] | None = None
        self._changed = trio.Event()
        self._cursors: dict[int, int] = {}
        self._ids = itertools.count()

    @property
    def changed(self) -> trio.Event:
        """Set at the next change (take it *before* reading the feed, then wait on it)."""
        return self._changed

    @property
    def first_log_seq(self) -> int:
        return self.logs[0].seq if self.logs else self.next_log_seq

    @property
    def state(self) -> JobState | None:
        return self.statuses[-1].state if self.statuses else None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def add_status(self, status: JobStatus) -> None:
        self.statuses.append(status)
        self._notify()

    def add_receipt(self, receipt: UsageReceipt) -> None:
        self.minutes += 1
        if len(self.receipts) < MAX_KEPT_RECEIPTS:
            self.receipts.append(receipt)
        self._notify()

    async def add_log(self, stream: Any, data: str) -> None:
        """Append one chunk; waits while the buffer is full of chunks a reader still needs."""
        while self.logs and self._log_chars + len(data) > self.max_log_chars:
            if self.logs[0].seq < min(self._cursors.values(), default=math.inf):
                self._log_chars -= len(self.logs.popleft().data)  # nobody needs it any more
            else:
                await self._changed.wait()  # a reader advances or leaves
        self.logs.append(LogChunk(job_id=self.job_id, seq=self.next_log_seq, stream=stream, data=data))
        self._log_chars += len(data)
        self.next_log_seq += 1
        self._notify()

    def set_result(self, ref: ResultRef) -> None:
        self.result = ref
        self._notify()

    def close(self, now: float) -> None:
        if not self.closed:
            self.closed, self.closed_at = True, now
            self._notify()

    def logs_from(self, seq: int) -> list[LogChunk]:
        first = self.first_log_seq
        return list(itertools.islice(self.logs, max(0, seq - first), None))

    @contextmanager
    def reader(self, log_from: int) -> Iterator[int]:
        """Register a reader whose next chunk is ``log_from``; yields its id (see :meth:`advance`)."""
        rid = next(self._ids)
        self._cursors[rid] = log_from
        try:
            yield rid
        finally:
            del self._cursors[rid]
            self._notify()

    def advance(self, rid: int, next_seq: int) -> None:
        self._cursors[rid] = next_seq
        self._notify()


class FeedTable:
    """The feeds of running and recently ended jobs, by job id (bounded, expiring)."""

    def __init__(self, clock: Callable[[], float], *, retention_s: float = FEED_RETENTION_S,
                 max_ended: int = MAX_ENDED_FEEDS) -> None:
        self.clock = clock
        self.retention_s = retention_s
        self.max_ended = max_ended
        self._feeds: OrderedDict[str, JobFeed] = OrderedDict()

    def add(self, feed: JobFeed) -> None:
        self.expire()
        self._feeds[feed.job_id] = feed

    def get(self, job_id: str) -> JobFeed | None:
        self.expire()
        return self._feeds.get(job_id)

    def expire(self) -> None:
        """Forget feeds ended more than the retention ago, and the oldest ended over the bound."""
        now = self.clock()
        ended = [f for f in self._feeds.values() if f.closed_at is not None]
        for i, feed in enumerate(ended):
            assert feed.closed_at is not None
            if now - feed.closed_at > self.retention_s or len(ended) - i > self.max_ended:
                del self._feeds[feed.job_id]


#: seal(message) -> the signed frame
Seal = Callable[[Any], bytes]


async def stream_feed(fs: FramedStream, feed: JobFeed, seal: Seal, *, log_from: int, clock: Callable[[], int],
                      heartbeats: bool) -> None:
    """Send ``feed`` to one renter from the start (logs from ``log_from``) until it is closed.

    The session's order holds: every log chunk and receipt before the final status, the result
    after it. With ``heartbeats`` a :class:`JobHeartbeat` goes out whenever nothing else was sent
    for :data:`HEARTBEAT_INTERVAL_S`. Raises the stream's error when the renter is gone."""
    status_i = receipt_i = 0
    log_next = log_from
    final_sent = result_sent = False
    last_sent = trio.current_time()

    async def send(message: Any) -> None:
        nonlocal last_sent
        await fs.write_frame(seal(message))
        last_sent = trio.current_time()

    with feed.reader(log_from) as rid:
        while True:
            changed = feed.changed
            final: JobStatus | None = None
            while status_i < len(feed.statuses):
                status = feed.statuses[status_i]
                if status.state.terminal:
                    final = status
                    break
                await send(status)
                status_i += 1
            for chunk in feed.logs_from(log_next):
                await send(chunk)
                log_next = chunk.seq + 1
                feed.advance(rid, log_next)
            log_next = max(log_next, feed.first_log_seq)  # dropped while nobody read (detached)
            while receipt_i < len(feed.receipts):
                await send(feed.receipts[receipt_i])
                receipt_i += 1
            if final is not None and log_next >= feed.next_log_seq:
                await send(final)
                status_i, final_sent = status_i + 1, True
            if final_sent and feed.result is not None and not result_sent:
                await send(feed.result)
                result_sent = True
            if feed.closed and final is None and status_i >= len(feed.statuses):
                return  # everything sent (a job task that ended without a final status: the renter sees the close)
            if changed.is_set():
                continue
            quiet_for = trio.current_time() - last_sent
            with trio.move_on_after(max(0.0, HEARTBEAT_INTERVAL_S - quiet_for)):
                await changed.wait()
            if heartbeats and trio.current_time() - last_sent >= HEARTBEAT_INTERVAL_S:
                await send(JobHeartbeat(job_id=feed.job_id, at=clock(), state=feed.state,
                                        next_log_seq=feed.next_log_seq, minutes=feed.minutes))
