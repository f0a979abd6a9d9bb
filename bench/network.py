"""Network benchmark: offer propagation (10 to 100 node processes), negotiation round trip, RSS.

Prints one JSON object. Every node is its own OS process on 127.0.0.1 (a provider with a
simulated GPU, so every node both publishes and relays). Propagation of one offer = the time
from its publication (its ``seq`` is the publisher's clock in ms) until the *last* node
accepted it, read from each node's status file.

- ``formation``: the network forming, from the first spawn until every node holds every offer:
  how many publications that took (each provider publishes at start and once more when it
  first has topic peers; joiners get the rest by offer sync), the offer deliveries they
  caused, their propagation, and the nodes' CPU seconds meanwhile.
- ``settled``: publications triggered one at a time with SIGUSR1 once the network has settled
  (every node holds every offer, then the nodes' CPU use has stopped falling: ``quiet_after_s``,
  ``idle_cores``): propagation p50/p99, and the nodes' CPU seconds per publication. The nodes
  run with a one-hour offer lifetime so that no periodic republish falls into this window;
  ``steady_default_ttl`` derives what the default lifetime's republishing (every node each
  100 s) costs in cores.

Negotiation: an in-process renter runs JobRequest → Agreement against one provider, paying for
real: the bootstrap node serves the development ledger and the providers verify escrows on it
(``--ledger-url``), so each round trip includes opening the escrow on the ledger
(``LedgerFunder``) and the provider reading it back. The ledger ``open`` call is also timed
alone, and the round trip is reported without it. RSS: resident set of each idle node process.
``offer_syncs``: the offers the nodes took from neighbours' books, at joining and by the
once-a-minute refresh (those had come neither by gossip nor by the first syncs).
``--baseline`` also runs ``bench/bare_libp2p.py`` (bare py-libp2p, same sizes) in the same run.

    .venv/bin/python bench/network.py [--sizes 10 30 50 100] [--publishes 20] [--baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio
from _common import cpu_seconds, pct, summary, trigger_publications, wait_file

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.node.adapters.p2p import YAMUX_SETTINGS, P2PConfig, open_node
from dgpu.node.adapters.p2p_discovery import Discovery
from dgpu.node.adapters.p2p_pubsub import GossipConfig
from dgpu.node.errors import NetworkError, RejectedError
from dgpu.node.services.negotiation import negotiate
from dgpu.node.services.offer_sync import sync_offers_from_peers
from dgpu.node.services.offers import OfferBook, OfferValidator
from dgpu.node.services.renter import LedgerFunder
from dgpu.protocol.escrow import RentalIds
from dgpu.protocol.ids import MAX_OFFER_BYTES, OFFERS_TOPIC, RENDEZVOUS_NAMESPACE
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import EscrowRef, Executor, Quote

#: offer lifetime of the bench's nodes (republished at a third of it)
BENCH_OFFER_TTL_S = 3600
#: the nodes' default offer lifetime (``dgpu node --offer-ttl``)
DEFAULT_OFFER_TTL_S = 300
#: every process has this long after the common SIGTERM (a 50-node network stopping at once on 2
#: cores took 20.8 s for its bootstrap, exit code 0)
STOP_DEADLINE_S = 45.0


class Swarm:
    def __init__(self, n: int, *, log_level: str = "WARNING", keep: bool = False,
                 offer_ttl_s: int = BENCH_OFFER_TTL_S) -> None:
        self.n = n
        self.offer_ttl_s = offer_ttl_s
        self.log_level, self.keep = log_level, keep
        self.dir = Path(tempfile.mkdtemp(prefix=f"dgpu-bench-{n}-"))
        self.dir.chmod(0o711)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.status: list[Path] = []
        self.boot = ""
        #: the bootstrap node's HTTP base URL: the development ledger
        self.ledger_url = ""

    def _spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        addr = self.dir / f"{name}.addr"
        log = (self.dir / f"{name}.log").open("ab")  # a restarted node goes on in the same log
        p = subprocess.Popen([sys.executable, "-m", "dgpu.client.main", *args, "--data-dir",
                              str(self.dir / name), "--addr-file", str(addr),
                              "--log-level", self.log_level], stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(p)
        return p, addr

    def start(self) -> None:
        url = self.dir / "bootstrap.url"
        _, addr = self._spawn("bootstrap", ["bootstrap", "--http-port", "0", "--http-url-file", str(url)])
        self.boot = wait_file(addr)
        self.ledger_url = wait_file(url)
        addrs = []
        for i in range(self.n):
            self.status.append(self.dir / f"n{i}.status")
            _, a = self._spawn(f"n{i}", self._node_args(i))
            addrs.append(a)
        for i, a in enumerate(addrs):
            try:
                wait_file(a, timeout=120 + 3 * self.n)  # 2 cores start ~1 node a second
            except TimeoutError:  # say why before the folder is removed
                tail = (self.dir / f"n{i}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node n{i} did not start (exit code {self.procs[i + 1].poll()}):\n{tail}") from None

    def _node_args(self, i: int) -> list[str]:
        return ["node", "--role", "provider", "--bootstrap", self.boot, "--simulated-gpu",
                f"RTX 4090:24576:{1 + i % 4}", "--price", str(100 + i), "--max-jobs", "64",
                "--ledger-url", self.ledger_url, "--status-file", str(self.status[i]), "--accept-simulated",
                # the default 300 s lifetime republishes every offer each 100 s: at 50+ nodes that
                # wave of every provider falls into the settled window; "steady" reports its cost
                "--offer-ttl", str(self.offer_ttl_s)]

    def restart(self, i: int, timeout_s: float = 120.0) -> None:
        """Stop node ``i`` (SIGTERM) and start it again from its folder: the same key, a new port."""
        old = self.procs[i + 1]
        old.send_signal(signal.SIGTERM)
        try:
            old.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            old.kill()
            old.wait()
        (self.dir / f"n{i}.addr").unlink(missing_ok=True)
        p, addr = self._spawn(f"n{i}", self._node_args(i))
        self.procs.pop()  # _spawn appended it: it takes the old one's place
        self.procs[i + 1] = p
        wait_file(addr, timeout=timeout_s)

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for st in self.status:
            try:
                out.append(json.loads(st.read_text()))
            except (OSError, ValueError):
                out.append({})
        return out

    def cpu_s(self) -> float:
        """CPU seconds the node processes (not the bootstrap) have used so far."""
        return cpu_seconds(p.pid for p in self.procs[1:])

    def publishers(self) -> set[str]:
        """Wallets of the nodes that publish an offer (one whose executor check failed does not)."""
        return {s["wallet"] for s in self.statuses() if s.get("own_seq") is not None}

    def settle(self, timeout: float = 90) -> float:
        """Seconds until every node holds the offer of every publishing node; -1 on timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            ss = self.statuses()
            published = {s["wallet"] for s in ss if s.get("own_seq") is not None}
            if published and all(s and published <= set(s.get("offers", {})) for s in ss):
                return time.monotonic() - t0
            time.sleep(0.5)
        return -1.0

    def quiet(self, window_s: float = 3.0, timeout_s: float = 120.0) -> tuple[float | None, float]:
        """Wait until the nodes' CPU use stops falling, below 3/4 of the machine: the tail of the
        formation (the last nodes' discovery rounds, dials and offer syncs) goes on for a while
        after every node holds every offer, and kept 30 nodes CPU-bound ~12 s. Returns the
        seconds waited (None: never quiet within ``timeout_s``) and the last window's cores."""
        t0 = time.monotonic()
        busy = float(psutil.cpu_count() or 1) * 0.75
        last = float("inf")
        while True:
            c0 = self.cpu_s()
            time.sleep(window_s)
            cores = (self.cpu_s() - c0) / window_s
            if cores < busy and cores >= 0.8 * last:
                return time.monotonic() - t0, cores
            if time.monotonic() - t0 > timeout_s:
                return None, cores
            last = cores

    def stop(self, deadline_s: float = STOP_DEADLINE_S) -> tuple[list[int | None], float]:
        """SIGTERM to every process at once; their exit codes (None: still running at the common
        deadline, then killed) and the seconds until the last one exited."""
        t0 = time.monotonic()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.0, t0 + deadline_s - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes.append(None)
        stop_s = time.monotonic() - t0
        if self.keep:
            print(f"kept the nodes' folders and logs in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return codes, stop_s


def _seen_since(sw: Swarm, start_ms: int) -> tuple[dict[tuple[str, int], list[int]], int]:
    """(provider, seq) -> receipt times at each node, for offers published since ``start_ms``;
    and the number of deliveries (accepted offers, every node counted)."""
    first_seen: dict[tuple[str, int], list[int]] = {}
    deliveries = 0
    for s in sw.statuses():
        for provider, seq, recv_ms in s.get("history", []):
            if seq >= start_ms:
                first_seen.setdefault((provider, seq), []).append(recv_ms)
                deliveries += 1
    return first_seen, deliveries


def _latencies(first_seen: dict[tuple[str, int], list[int]], n: int) -> dict[str, Any]:
    lat = [max(v) - seq for (_, seq), v in first_seen.items() if len(v) == n]
    return {"reached_all": len(lat), "incomplete": sum(1 for v in first_seen.values() if len(v) < n),
            "median_ms": round(statistics.median(lat), 1) if lat else None,
            "p99_ms": round(pct(lat, 0.99), 1) if lat else None, "max_ms": max(lat) if lat else None}


def formation(sw: Swarm, start_ms: int, cpu_s: float, settle_s: float) -> dict[str, Any]:
    """The formation wave: only the publications made while the network formed."""
    first_seen, deliveries = _seen_since(sw, start_ms)
    return {"settle_s": round(settle_s, 1), "publishers": len(sw.publishers()), "publications": len(first_seen),
            "per_node": round(len(first_seen) / sw.n, 2), "deliveries": deliveries,
            "cpu_s": round(cpu_s, 1), **_latencies(first_seen, sw.n)}


def propagation(sw: Swarm, publishes: int, gap_s: float) -> dict[str, Any]:
    start_ms = time.time_ns() // 1_000_000
    cpu0 = sw.cpu_s()
    trigger_publications(sw.procs[1:], publishes, gap_s)  # an older seq is never overtaken
    # poll until every triggered offer reached every node (or give up after 20 s: lost)
    end = time.monotonic() + 20
    while True:
        time.sleep(1)
        first_seen, _ = _seen_since(sw, start_ms)
        if ((len(first_seen) >= publishes and all(len(v) == sw.n for v in first_seen.values()))
                or time.monotonic() > end):
            break
    cpu = sw.cpu_s() - cpu0
    return {"messages": len(first_seen), **_latencies(first_seen, sw.n),
            "cpu_s_per_publish": round(cpu / max(1, len(first_seen)), 3)}


def offer_syncs(sw: Swarm) -> dict[str, int]:
    """Offers the nodes accepted from neighbours' books, summed: when they first saw them
    (``join``), and from the neighbour drawn about once a minute (``refresh``: offers neither
    gossip nor the first syncs had brought), with the nodes a refresh brought anything to."""
    totals = {"join": 0, "refresh": 0, "refreshes": 0, "nodes_a_refresh_helped": 0}
    for s in sw.statuses():
        synced = s.get("synced", {})
        for key in ("join", "refresh", "refreshes"):
            totals[key] += int(synced.get(key, 0))
        totals["nodes_a_refresh_helped"] += synced.get("refresh", 0) > 0
    return totals


def rss(sw: Swarm) -> dict[str, float]:
    vals = [psutil.Process(p.pid).memory_info().rss / 2**20 for p in sw.procs[1:]
            if p.poll() is None]
    return {"median_mb": round(statistics.median(vals), 1), "max_mb": round(max(vals), 1)}


class TimedFunder:
    """``LedgerFunder`` with the duration of its last ``fund`` (the ledger's ``open``) recorded."""

    def __init__(self, inner: LedgerFunder) -> None:
        self.inner = inner
        self.last_s = 0.0

    async def fund(self, quote: Quote) -> EscrowRef:
        t0 = time.perf_counter()
        try:
            return await self.inner.fund(quote)
        finally:
            self.last_s = time.perf_counter() - t0


async def negotiation_rtt(boot: str, ledger_url: str, rounds: int) -> dict[str, Any]:
    key = SigningKey(secrets.token_bytes(32))
    ledger = DevLedgerEscrow(ledger_url, key)
    try:
        await ledger.faucet(10_000_000)  # development tokens: each round locks one small deposit
        times, funding, failures = await _negotiate_rounds(boot, key, ledger, rounds)
    finally:
        await ledger.aclose()
    if not times:
        return {"rounds": 0, "failures": failures}
    return {"rounds": len(times), "failures": failures, "with_funding": summary(times),
            "ledger_open": summary(funding),
            "without_ledger_call": summary([t - f for t, f in zip(times, funding, strict=True)])}


async def _negotiate_rounds(boot: str, key: SigningKey, ledger: DevLedgerEscrow, rounds: int
                            ) -> tuple[list[float], list[float], list[str]]:
    """(round trips, ledger opens) in ms. Round-robin over the providers: each throttles a renter
    after 3 unused agreements in 10 minutes (money before work), so each gets at most 3, and the
    first with each (the dial) is left out."""
    times: list[float] = []
    funding: list[float] = []
    failures: list[str] = []
    async with open_node(key, P2PConfig(gossip=GossipConfig(max_data_bytes=MAX_OFFER_BYTES))
                         ) as node, trio.open_nursery() as nursery:
        book = OfferBook()
        validator = OfferValidator(book, clock=lambda: int(time.time()), accept_simulated=True)
        await node.subscribe(OFFERS_TOPIC, validator)
        await nursery.start(Discovery(node, [boot], RENDEZVOUS_NAMESPACE, advertise=False).run)
        nursery.start_soon(sync_offers_from_peers, node, validator)  # as a renter node does
        with trio.move_on_after(60):
            while len(book) < 10:
                await trio.sleep(0.2)
        entries = list(book._entries.values())[:10]
        want = len(entries)
        if not want:
            raise RuntimeError("the renter found no offer")
        rounds = min(rounds, 2 * want)
        job = {"executor": Executor.SCRIPT, "script": "true", "max_minutes": 1, "gpu_count": 1,
               "max_price_per_minute": 10**6}
        rental_ids = RentalIds(lambda: time.time_ns() // 1000)
        for i in range(want + rounds):
            entry = entries[i % want]
            funder = TimedFunder(LedgerFunder(ledger, rental_ids))
            t0 = time.perf_counter()
            try:
                await negotiate(node, key, entry.offer, job, escrow=funder,
                                clock=lambda: int(time.time()),
                                nonce=lambda: secrets.token_bytes(16), provider_peer=entry.peer_id)
            except (NetworkError, RejectedError) as exc:  # a loaded machine: count it, go on
                failures.append(f"{type(exc).__name__}: {exc}"[:120])
                continue
            if i >= want:  # the first with each provider includes the dial
                times.append((time.perf_counter() - t0) * 1000)
                funding.append(funder.last_s * 1000)
            if funder.inner.handle is not None:  # never started: the deposit comes back (untimed)
                await ledger.close(funder.inner.handle)
        nursery.cancel_scope.cancel()
    return times, funding, failures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 50, 100])
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--gap", type=float, default=0.5)
    ap.add_argument("--negotiations", type=int, default=20, help="at most 2 per provider (10 providers)")
    ap.add_argument("--baseline", action="store_true", help="also run bench/bare_libp2p.py (bare py-libp2p)")
    ap.add_argument("--log-level", default="WARNING", help="the nodes' log level")
    ap.add_argument("--keep", action="store_true", help="keep each swarm's folder (logs, status files)")
    args = ap.parse_args()
    out: dict[str, Any] = {"cpus": psutil.cpu_count(), "loadavg_before": os.getloadavg(),
                           # the nodes' effective yamux settings (the environment's own win)
                           "yamux": {k: os.environ.get(k, v) for k, v in YAMUX_SETTINGS.items()},
                           "propagation": {}}
    for i, n in enumerate(args.sizes):
        sw = Swarm(n, log_level=args.log_level, keep=args.keep)
        entry: dict[str, Any] = {}
        try:
            t0 = time.monotonic()
            start_ms = time.time_ns() // 1_000_000
            sw.start()
            started = time.monotonic() - t0
            settled = sw.settle(timeout=90 + 2 * n)
            quiet_s, idle_cores = sw.quiet()
            entry = {"start_s": round(started, 1),
                     "formation": formation(sw, start_ms, sw.cpu_s(), settled),
                     # after every node held every offer, until the CPU use stopped falling
                     "quiet_after_s": None if quiet_s is None else round(quiet_s, 1),
                     "idle_cores": round(idle_cores, 2), "idle_rss": rss(sw)}
            entry["settled"] = propagation(sw, args.publishes, args.gap)
            entry["offer_syncs"] = offer_syncs(sw)
            # what the periodic republishing of the default lifetime costs this machine (derived)
            per_s = n / (DEFAULT_OFFER_TTL_S / 3)
            entry["steady_default_ttl"] = {"republish_per_s": round(per_s, 2),
                                           "cpu_cores": round(per_s * entry["settled"]["cpu_s_per_publish"], 2)}
            if i == 0:
                out["negotiation"] = trio.run(negotiation_rtt, sw.boot, sw.ledger_url, args.negotiations)
        finally:
            codes, stop_s = sw.stop()
            entry["stop_s"] = round(stop_s, 1)
            entry["unclean_exits"] = sum(1 for c in codes if c != 0)
            # which, and how: None = still running STOP_DEADLINE_S after SIGTERM (killed), else the exit code
            entry["unclean"] = {("bootstrap" if j == 0 else f"n{j - 1}"): c for j, c in enumerate(codes) if c != 0}
        out["propagation"][str(n)] = entry
        print(json.dumps({str(n): entry}), file=sys.stderr, flush=True)  # progress: big sizes take minutes
    if args.baseline:
        bare = subprocess.run([sys.executable, str(Path(__file__).with_name("bare_libp2p.py")), "--sizes",
                               *map(str, args.sizes), "--publishes", str(args.publishes), "--gap", str(args.gap),
                               "--rounds", str(args.negotiations)], capture_output=True, check=True, text=True)
        out["bare_libp2p"] = json.loads(bare.stdout)
        if out["bare_libp2p"]["yamux"] != out["yamux"]:  # like for like, or say it is not
            out["bare_libp2p"]["yamux_differs_from_the_nodes"] = True
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
