"""Rental ids for one renter key: strictly increasing, as the escrow rules require.

Both ledgers refuse an ``open`` whose rental id is not above the highest one the renter opened
before (``RentalIdUsed``): that is what keeps a closed rental from ever being opened again once
its escrow account is gone. :class:`RentalIds` gives microseconds of the wall clock, lifted above
the last id it gave, so ids keep increasing within a process and across restarts (unless the
wall clock steps back; then the ledger refuses and the caller asks again, getting a higher id).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RentalIds"]


class RentalIds:
    """``ids()`` returns a new rental id, higher than every earlier one from this object."""

    def __init__(self, clock_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self._clock_us = clock_us
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, self._clock_us())
            return self._last
