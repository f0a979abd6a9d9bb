"""Token-bucket rate limiting with bounded memory (pure: the time is an argument).

Each key (an IP address, a wallet) owns a bucket of ``burst`` tokens refilled at ``rate`` tokens
per second; a request takes one token or is refused with the seconds until one is available.
At most ``max_keys`` buckets are kept: the least recently used one is forgotten when a new key
arrives, so a flood of distinct keys costs bounded memory. A forgotten key comes back with a
full bucket; since the least recently used bucket is the one most likely to be full anyway,
that concession is small, and it is the price of the bound.
"""

from __future__ import annotations

import math
from collections import OrderedDict

__all__ = ["TokenBucketLimiter"]


class TokenBucketLimiter:
    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        if rate <= 0 or burst <= 0 or max_keys <= 0:
            raise ValueError("rate, burst and max_keys must be positive")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # key -> (tokens, time of last update); ordered by last use, oldest first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, now: float) -> float:
        """Take one token for ``key``; return 0.0 if allowed, else seconds to wait (> 0)."""
        entry = self._buckets.get(key)
        if entry is None:
            tokens, last = float(self.burst), now
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
        else:
            tokens, last = entry
            self._buckets.move_to_end(key)
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after_header(wait_s: float) -> int:
        """Whole seconds for a ``Retry-After`` header (at least 1)."""
        return max(1, math.ceil(wait_s))
