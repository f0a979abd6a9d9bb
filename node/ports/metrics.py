"""The metrics port: what services report as it happens, to an object passed in.

Services never touch a metrics library or a global registry: they call these methods on the
recorder they were given (``dgpu.node.metrics.NodeMetrics`` in a node, a list in a test). State
that an object already keeps (leases, negotiation outcomes, connections) is not reported here: it
is read at scrape time from its owner.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["LedgerObserver", "MeterObserver"]


class LedgerObserver(Protocol):
    def ledger_call(self, action: str, outcome: str, seconds: float) -> None:
        """One call to the escrow ledger: its method (``claim``, ``fetch``, ...), ``ok`` or the
        error class it ended with (``refused``, ``transport``, ...), and how long it took."""
        ...


class MeterObserver(Protocol):
    def minute_metered(self, job_id: str) -> None:
        """The meter stored one more usage minute of ``job_id`` (never twice for one minute)."""
        ...
