"""What the benchmarks share: percentiles, a latency summary, waiting for a child's file, and
the CPU seconds a set of child processes used. (``bench/x.py`` runs with ``bench/`` first on
``sys.path``, so ``from _common import ...`` works from every script.)"""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

__all__ = ["cpu_seconds", "echo_exchange", "pct", "summary", "trigger_publications", "wait_file"]


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values_ms: Sequence[float]) -> dict[str, float]:
    """Median and p99 of times in milliseconds."""
    return {"median_ms": round(statistics.median(values_ms), 2), "p99_ms": round(pct(values_ms, 0.99), 2)}


def wait_file(path: Path, timeout: float = 120) -> str:
    """The content of ``path`` once a child has written it (not only created it)."""
    end = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        if time.monotonic() > end:
            raise TimeoutError(str(path))
        time.sleep(0.05)
    return path.read_text().strip()


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the processes have used so far (gone ones count 0)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def trigger_publications(procs: Sequence[subprocess.Popen[bytes]], publishes: int, gap_s: float) -> None:
    """SIGUSR1 (publish now) to ``publishes`` of the processes, ``gap_s`` apart, round-robin over
    a fixed shuffled order: one node's consecutive publications are len(procs)*gap_s apart, so a
    newer one never overtakes an older one."""
    order = list(procs)
    random.Random(1).shuffle(order)
    for i in range(publishes):
        order[i % len(order)].send_signal(signal.SIGUSR1)
        time.sleep(gap_s)


async def echo_exchange(stream: Any, payload: int, rounds: int = 2) -> None:
    """The bare baseline's request/response: ``rounds`` times write ``payload`` bytes and read as
    many back (what a negotiation's two round trips are, without signatures or schema)."""
    for _ in range(rounds):
        await stream.write(b"x" * payload)
        got = 0
        while got < payload:
            got += len(await stream.read(payload - got))
