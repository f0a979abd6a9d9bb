"""Small networks for the fault tests, and the ledger audit run after each fault.

A :class:`FaultNetwork` is a :class:`~dgpu.client.demo.DemoNetwork` (separate OS processes on
127.0.0.1: a bootstrap node serving the development ledger at x60, providers) whose bootstrap
listens on fixed ports, so it can be killed and started again on the same addresses with the
same data (identity and ledger database), as a restarted host would be.

:func:`audit` reads the ledger's SQLite file directly (read-only): conservation (balances sum to
what the faucet minted; every closed escrow paid + fee + refunded == deposited with an empty
vault), every escrow closed, and the journal's times never running back.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dgpu.client.demo import DemoNetwork, _wait_file
from dgpu.node.adapters.disk_cap import remove_tree

#: the ledger's clock speed: one wall second is one ledger minute
SPEED = 60
#: the providers' most wall seconds between two tries of a settlement that did not land
SETTLE_RETRY_MAX_S = 1.0
PROVIDER_FLAGS = ["--executor", "script", "--claim-interval", "120", "--billing-grace", "60",
                  "--billing-poll", "0.3", "--meter-interval", "1", "--start-window", "3",
                  "--settle-retry-max", str(SETTLE_RETRY_MAX_S)]
PRICE = 1_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultNetwork(DemoNetwork):
    """A demo network whose bootstrap can be killed and restarted on the same ports and data."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, log_level="INFO")
        self._ports = (free_port(), free_port())
        self.restarts = 0

    def start_bootstrap(self, deadline: float, *, ledger_speed: int = SPEED) -> str:
        addr_file, url_file = self.workdir / "bootstrap.addr", self.workdir / "bootstrap.url"
        for stale in (addr_file, url_file):
            stale.unlink(missing_ok=True)
        port, http_port = self._ports
        proc = self._spawn(f"bootstrap{self.restarts or ''}", [
            "bootstrap", "--data-dir", str(self.workdir / "bootstrap"), "--addr-file", str(addr_file),
            "--port", str(port), "--http-port", str(http_port), "--http-url-file", str(url_file),
            "--ledger-clock-speed", str(ledger_speed)])
        self.procs["bootstrap"] = proc
        self.addrs["bootstrap"] = _wait_file(addr_file, proc, deadline)
        self.ledger_url = _wait_file(url_file, proc, deadline)
        return self.addrs["bootstrap"]

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def restart_bootstrap(self) -> None:
        self.restarts += 1
        self.start_bootstrap(time.monotonic() + 60)

    def restart_provider(self, name: str, gpu: str) -> str:
        (self.workdir / f"{name}.addr").unlink(missing_ok=True)
        self.procs.pop(name, None)
        return self.start_provider(f"{name}", gpu, PRICE, time.monotonic() + 60, extra=PROVIDER_FLAGS)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    @property
    def ledger_db(self) -> Path:
        return self.workdir / "bootstrap" / "ledger.sqlite3"


@contextlib.contextmanager
def fault_network(*providers: tuple[str, str]) -> Iterator[FaultNetwork]:
    # script jobs run as their own uid under the providers' folders: every parent must be
    # traversable, which pytest's own tmp folders (0700) are not
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-faults-"))
    os.chmod(workdir, 0o711)
    net = FaultNetwork(workdir)
    deadline = time.monotonic() + 90
    try:
        net.start_bootstrap(deadline)
        for name, gpu in providers:
            net.start_provider(name, gpu, PRICE, deadline, extra=PROVIDER_FLAGS)
        yield net
    finally:
        net.stop()
        if os.environ.get("DGPU_TEST_KEEP"):  # debugging: keep the nodes' logs and data
            print(f"kept {workdir}")
        else:
            remove_tree(workdir)  # and the job folders a killed provider left mounted


@dataclass(frozen=True)
class EscrowRow:
    address: str
    status: str
    started_at: int | None
    claimed_minutes: int
    deposited: int
    paid: int
    fee_paid: int
    refunded: int
    vault: int


def escrows(db: Path) -> dict[str, EscrowRow]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT e.address, e.status, e.started_at, e.claimed_minutes, e.deposited, e.paid, e.fee_paid, "
            "e.refunded, COALESCE(a.balance, 0) FROM escrows e LEFT JOIN accounts a ON a.owner = e.address"
        ).fetchall()
    finally:
        conn.close()
    return {r[0]: EscrowRow(*r) for r in rows}


def audit(db: Path) -> dict[str, EscrowRow]:
    """Assert conservation, every escrow closed and monotonic journal times; the escrows."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (minted,) = conn.execute("SELECT COALESCE(SUM(amount), 0) FROM mints").fetchone()
        (held,) = conn.execute("SELECT COALESCE(SUM(balance), 0) FROM accounts").fetchone()
        times = [at for (at,) in conn.execute("SELECT at FROM journal ORDER BY seq")]
    finally:
        conn.close()
    assert held == minted, f"balances sum to {held}, the faucet minted {minted}"
    assert times == sorted(times), "a ledger action was stamped earlier than one before it"
    found = escrows(db)
    for e in found.values():
        assert e.status == "closed", f"escrow {e.address} is {e.status}"
        assert e.vault == 0 and e.paid + e.fee_paid + e.refunded == e.deposited, f"escrow {e.address} does not balance"
    return found


def over_billed(row: EscrowRow, ran_until: int) -> int:
    """Minutes paid beyond those the job ran (from the escrow's start to ledger time ``ran_until``,
    rounded up: the rules count a started minute)."""
    assert row.started_at is not None
    ran = math.ceil(max(0, ran_until - row.started_at) / 60)
    return row.claimed_minutes - ran


def job_processes(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker`` (a script job's argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in args:
                found.append(int(entry.name))
    return found


def script(seconds: int) -> str:
    return f'echo started\nfor i in $(seq 1 {seconds}); do sleep 1; echo "tick $i"; done\necho done\n'


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``predicate()`` until true (blocking; for checks outside trio); seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - start


__all__ = ["PRICE", "PROVIDER_FLAGS", "SPEED", "EscrowRow", "FaultNetwork", "audit", "escrows", "fault_network",
           "job_processes", "over_billed", "script", "wait_for"]
