"""One rental's progress kept in the renter's rental book, so its node can re-attach to the job.

Why: a batch job outlives the renter's node (the provider runs it on). The tracker records the
rental when it is agreed, the first log chunk not yet received as chunks arrive (at most once
per :data:`PERSIST_EVERY_S`, so after a crash a re-attach repeats at most that much log), the
result reference, and the end (the final status handled and the escrow settled: a rental that
ended is never re-attached on its own). Without a book (a library client with a throw-away data
dir) it only counts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from dgpu.node.ports.store import RentalBook, RentalRecord
from dgpu.protocol.messages import Agreement, LogChunk, ResultRef

__all__ = ["PERSIST_EVERY_S", "RentalTracker"]

#: the log offset is written at most this often (seconds of the renter's clock)
PERSIST_EVERY_S: Final = 1

LogSink = Callable[[LogChunk], Awaitable[None] | None]


class RentalTracker:
    """Owns one rental's row in the rental book (or nothing, without a book)."""

    def __init__(self, book: RentalBook | None, rental_id: str, clock: Callable[[], int], *,
                 submitted: bool = False, log_offset: int = 0) -> None:
        self.book = book
        self.rental_id = rental_id
        self.clock = clock
        #: the job was submitted before (by this node, before a restart): the next run re-attaches
        self.submitted = submitted
        #: the first log chunk not yet received
        self.log_offset = log_offset
        self._persisted_at = clock()

    @classmethod
    def of(cls, book: RentalBook, record: RentalRecord, clock: Callable[[], int]) -> RentalTracker:
        return cls(book, record.agreement_id, clock, submitted=True, log_offset=record.log_offset)

    async def agreed(self, agreement: Agreement, provider_peer: str, provider_addrs: Sequence[str], *,
                     stop_on_disconnect: bool) -> None:
        if self.book is not None:
            await self.book.add_rental_record(self.rental_id, provider_peer, agreement.model_dump(mode="json"),
                                              provider_addrs=provider_addrs, stop_on_disconnect=stop_on_disconnect)

    def next_run(self) -> int | None:
        """The log offset to re-attach from, or None for a first submit; the job counts as submitted."""
        attach_from = self.log_offset if self.submitted else None
        self.submitted = True
        return attach_from

    def sink(self, on_log: LogSink | None) -> LogSink:
        """``on_log``, with the offset advanced (and written now and then) after each chunk."""

        async def tracked(chunk: LogChunk) -> None:
            if on_log is not None:
                maybe = on_log(chunk)
                if maybe is not None:
                    await maybe
            self.log_offset = chunk.seq + 1
            if self.book is not None and self.clock() - self._persisted_at >= PERSIST_EVERY_S:
                self._persisted_at = self.clock()
                await self.book.rental_progress(self.rental_id, log_offset=self.log_offset, state=None)

        return tracked

    async def ended(self, state: str | None, result: ResultRef | None) -> None:
        if self.book is None:
            return
        await self.book.rental_progress(self.rental_id, log_offset=self.log_offset, state=state,
                                        result=result.model_dump(mode="json") if result is not None else None)
        await self.book.end_rental_record(self.rental_id, state)
