"""Offers: the gossip validator and the offer book (the provider's publisher: ``publisher.py``).

Rules of the offer book:

- One entry per provider (its wallet); an offer replaces the entry only with a higher ``seq``.
- Expired offers drop out (on every query and every insert), so the book never answers
  with an offer that is no longer valid.
- A signed withdrawal (the provider stopped or paused) drops the entry at once and leaves a
  tombstone with its ``seq`` until every older offer has expired, so a replayed or late older
  offer cannot bring it back; only a higher ``seq`` does.
- The book is bounded (``capacity`` providers, at most ``max_per_forwarder`` of them first
  relayed by one peer). When full, a newcomer makes room by evicting, never a provider this
  renter rented from (:meth:`OfferBook.mark_rented`) nor one that renewed its offer: only an
  unknown newcomer, the latest first. A flood of fresh keys churns among itself.

The validator is the gossipsub gate (see ``adapters.p2p.P2PNode.subscribe``): an offer it
accepts is stored *and* relayed; one it refuses is neither, and counts against the peer that
forwarded it — except an older ``seq`` that is not a replay, which gossip delivers out of
order in normal operation: it is ignored without blame. It checks, in order: size, envelope
(schema, signature, validity window), that the envelope's signer is the pubsub origin (the
peer that libp2p says signed the message) and the offer's provider, expiry (bounded by the
envelope's and by ``MAX_OFFER_TTL_S`` from now), the simulated-inventory policy, ``seq``, and a
per-origin quota of offers per minute. A withdrawal goes through the same checks (size, envelope,
signer = origin = provider, ``seq``, replay, quota) and is relayed like an offer.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import operator
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from dgpu.node.ports.network import GossipMessage, Verdict
from dgpu.protocol.envelope import Opened, ReplayCache, open_envelope
from dgpu.protocol.errors import RemoteProtocolError
from dgpu.protocol.ids import MAX_OFFER_BYTES, MAX_OFFER_TTL_S
from dgpu.protocol.messages import OFFERS_TOPIC_ADAPTER, Executor, Offer, OfferWithdrawal

__all__ = [
    "REFUSALS",
    "OfferBook",
    "OfferQuery",
    "OfferValidator",
]

log = logging.getLogger(__name__)

Clock = Callable[[], int]
#: offers accepted per origin per minute (providers republish every ~100 s): more is ignored
ORIGIN_OFFERS_PER_MINUTE = 20


@dataclass(frozen=True, slots=True)
class BookEntry:
    offer: Offer
    #: base58 libp2p peer id of the provider (pubsub origin), used to dial it
    peer_id: str
    #: the peer that first relayed this provider to us, its arrival number, and its renewals
    forwarder: str = ""
    arrival: int = 0
    renewals: int = 0
    #: the signed envelope as gossiped (what offer sync hands on, validated again there)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class OfferQuery:
    """What a renter looks for. Every field is optional; prices are per GPU-minute."""

    gpu_model: str | None = None
    min_vram_mib: int = 0
    gpu_count: int = 1
    region: str | None = None
    max_price_per_minute: int | None = None
    executor: Executor | None = None
    include_simulated: bool = False
    #: the Docker image the job runs (offers listing their images must allow it)
    image: str | None = None

    def matches(self, offer: Offer) -> bool:
        return self.rejection(offer) is None

    def rejection(self, offer: Offer) -> str | None:
        """Why ``offer`` does not match (the first reason, in words a renter can act on), or None."""
        if offer.simulated and not self.include_simulated:
            return "simulated GPU (hidden unless simulated offers are accepted)"
        if self.executor is not None and self.executor not in offer.executors:
            return f"runs {'/'.join(e.value for e in offer.executors)} jobs, not {self.executor.value}"
        if self.image is not None and not offer.allows_image(self.image):
            allowed = ", ".join(offer.images[:3]) if offer.images else "none"
            return f"image {self.image} not allowed (it runs {allowed}{', ...' if len(offer.images or ()) > 3 else ''})"
        if self.region is not None and offer.region != self.region:
            return f"region {offer.region}, not {self.region}"
        want = self.gpu_model.casefold() if self.gpu_model else None
        kinds = [g for g in offer.gpus if want is None or g.model.casefold() == want]
        if not kinds:
            return f"GPU {', '.join(g.model for g in offer.gpus)}, not {self.gpu_model}"
        if all(g.vram_mib < self.min_vram_mib for g in kinds):
            return f"{max(g.vram_mib for g in kinds)} MiB of VRAM, fewer than {self.min_vram_mib}"
        if not any(g.vram_mib >= self.min_vram_mib and g.count >= self.gpu_count for g in kinds):
            return f"{max(g.count for g in kinds)} GPU(s) of that kind, fewer than {self.gpu_count}"
        if self.max_price_per_minute is not None and offer.price_per_minute > self.max_price_per_minute:
            return f"price {offer.price_per_minute} per GPU-minute, above {self.max_price_per_minute}"
        return None


@dataclass(frozen=True, slots=True)
class _Facts:
    """What queries test, computed once when an offer is stored (queries scan thousands)."""

    provider: str
    region: str
    price: int
    max_vram: int
    executors: frozenset[Executor]
    simulated: bool
    #: (model casefolded, VRAM MiB, count) per GPU kind
    gpus: tuple[tuple[str, int, int], ...]
    offer: Offer

    @classmethod
    def of(cls, offer: Offer) -> _Facts:
        return cls(offer.provider, offer.region, offer.price_per_minute, max(g.vram_mib for g in offer.gpus),
                   frozenset(offer.executors), offer.simulated,
                   tuple((g.model.casefold(), g.vram_mib, g.count) for g in offer.gpus), offer)


#: the other orders a query can return: (fact, descending) re-sorts of the price order, which
#: Python's stable sort turns into (-price, -VRAM, provider), (VRAM, price, provider) and
#: (-VRAM, price, provider) without building a key tuple per offer
ORDERS: dict[str, tuple[Callable[[_Facts], int], bool]] = {
    "-price": (operator.attrgetter("price"), True),
    "vram": (operator.attrgetter("max_vram"), False),
    "-vram": (operator.attrgetter("max_vram"), True),
}


def _order_key(offer: Offer) -> tuple[int, int, str]:
    """Cheapest first; ties: more VRAM, then provider (stable)."""
    return (offer.price_per_minute, -max(g.vram_mib for g in offer.gpus), offer.provider)


class OfferBook:
    """The offers this node knows, newest ``seq`` per provider, bounded and expiry-pruned.

    Kept in price order (a sorted key list, updated by bisection on every change) with each
    offer's query facts precomputed, and expired lazily from a heap, so a query is one scan
    with no sort and a store is logarithmic plus a list shift."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity  # providers; ~2 KiB each, so 1000 is ~2 MiB at most
        self._entries: dict[str, BookEntry] = {}
        self._facts: dict[str, _Facts] = {}
        #: (*_order_key, facts, entry) of every stored offer, sorted by the key (unique per
        #: provider, so the trailing items are never compared)
        self._order: list[tuple[int, int, str, _Facts, BookEntry]] = []
        #: the signed envelopes of the stored offers (offer sync hands the same bytes on again)
        self._envelopes: set[bytes] = set()
        #: (expires_at, provider, seq); entries for replaced offers are skipped when popped
        self._expiry: list[tuple[int, str, int]] = []
        #: changes are signalled here (renters waiting for offers); replaced on every change
        self._changed = trio.Event()
        self.max_per_forwarder = max(1, capacity * 3 // 4)
        self._by_forwarder: Counter[str] = Counter()
        self._arrivals = 0
        #: providers this renter rented from (kept in a full book), most recent last
        self._trusted: OrderedDict[str, None] = OrderedDict()
        #: withdrawn providers -> (withdrawal seq, kept until, its envelope), oldest first (bounded)
        self._withdrawn: OrderedDict[str, tuple[int, int, bytes]] = OrderedDict()

    def forget(self, provider: str) -> None:
        """Drop ``provider``'s offer (it could not be reached); its next offer is taken again."""
        if provider in self._entries:
            self._remove(provider)

    def mark_rented(self, provider: str) -> None:
        """A rental with ``provider`` was agreed: its offers survive a flood of newcomers."""
        self._trusted.pop(provider, None)
        self._trusted[provider] = None
        while len(self._trusted) > self.capacity:
            self._trusted.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def holds_envelope(self, data: bytes) -> bool:
        """Whether ``data`` is, byte for byte, the envelope of an offer stored here."""
        return data in self._envelopes

    def last_seq(self, provider: str) -> int | None:
        """The highest ``seq`` seen from ``provider``: its offer's, or its withdrawal's."""
        entry = self._entries.get(provider)
        if entry is not None:
            return entry.offer.seq
        tomb = self._withdrawn.get(provider)
        return tomb[0] if tomb is not None else None

    def withdraw(self, withdrawal: OfferWithdrawal, *, now: int, data: bytes = b"") -> bool:
        """Apply a (verified) withdrawal: drop the provider's offer if older; False when stale."""
        last = self.last_seq(withdrawal.provider)
        if last is not None and withdrawal.seq <= last:
            return False
        if withdrawal.provider in self._entries:
            self._remove(withdrawal.provider)
            self._signal()
        self._withdrawn.pop(withdrawal.provider, None)
        # every offer with a lower seq was issued before and so expires within MAX_OFFER_TTL_S
        self._withdrawn[withdrawal.provider] = (withdrawal.seq, now + MAX_OFFER_TTL_S, data)
        while len(self._withdrawn) > 4 * self.capacity:
            self._withdrawn.popitem(last=False)
        return True

    def withdrawals(self, now: int) -> list[bytes]:
        """The envelopes of the withdrawals still in force (what offer sync hands on)."""
        return [data for _, until, data in self._withdrawn.values() if until > now and data]

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def get(self, provider: str) -> BookEntry | None:
        return self._entries.get(provider)

    def _remove(self, provider: str) -> None:
        entry = self._entries.pop(provider)
        self._envelopes.discard(entry.data)
        self._by_forwarder[entry.forwarder] -= 1
        self._by_forwarder += Counter()  # drops the relays that hold nothing now
        del self._facts[provider]
        del self._order[bisect.bisect_left(self._order, _order_key(entry.offer))]

    def drop_expired(self, now: int) -> int:
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, provider, seq = heapq.heappop(self._expiry)
            entry = self._entries.get(provider)
            if entry is not None and entry.offer.seq == seq and entry.offer.expires_at == expires_at:
                self._remove(provider)
                dropped += 1
        return dropped

    def _victim(self) -> BookEntry | None:
        """Who makes room for a newcomer: an unknown newcomer too (never renewed, not rented
        from), the latest to arrive first; None when every entry is known."""
        candidates = (e for p, e in self._entries.items() if not e.renewals and p not in self._trusted)
        return max(candidates, key=operator.attrgetter("arrival"), default=None)

    def put(self, offer: Offer, peer_id: str, *, now: int, forwarder: str = "", data: bytes = b"") -> bool:
        """Store ``offer`` if it is newer than what we hold; False when not stored."""
        self.drop_expired(now)
        old = self._entries.get(offer.provider)
        last = self.last_seq(offer.provider)
        if last is not None and offer.seq <= last:
            return False
        if old is None:
            if forwarder and self._by_forwarder[forwarder] >= self.max_per_forwarder:
                return False  # one relay may not fill the book
            if len(self._entries) >= self.capacity:
                victim = self._victim()
                if victim is None:
                    return False
                self._remove(victim.offer.provider)
            self._arrivals += 1
            entry = BookEntry(offer, peer_id, forwarder, self._arrivals, 0, data)
        else:
            self._remove(offer.provider)
            entry = BookEntry(offer, peer_id, old.forwarder, old.arrival, old.renewals + 1, data)
        self._by_forwarder[entry.forwarder] += 1
        facts = _Facts.of(offer)
        self._entries[offer.provider] = entry
        self._facts[offer.provider] = facts
        if data:
            self._envelopes.add(data)
        bisect.insort(self._order, (*_order_key(offer), facts, entry))
        heapq.heappush(self._expiry, (offer.expires_at, offer.provider, offer.seq))
        self._withdrawn.pop(offer.provider, None)
        self._signal()
        return True

    def query(self, q: OfferQuery, *, now: int, order: str = "price") -> list[BookEntry]:
        """Matching offers, cheapest first (ties: more VRAM, then provider for stability), or in
        another of :data:`ORDERS` ("-price", "vram", "-vram")."""
        matched = self._scan(q, now)
        if order != "price":
            key, descending = ORDERS[order]
            matched.sort(key=key, reverse=descending)
        entries = self._entries
        return [entries[f.provider] for f in matched]

    def closest(self, q: OfferQuery, *, now: int, limit: int = 3) -> list[tuple[BookEntry, str]]:
        """The cheapest ``limit`` offers that do not match, each with the first reason why (what a
        renter whose query found nothing needs to widen it)."""
        self.drop_expired(now)
        out: list[tuple[BookEntry, str]] = []
        for *_, entry in self._order:
            reason = q.rejection(entry.offer)
            if reason is not None:
                out.append((entry, reason))
                if len(out) >= limit:
                    break
        return out

    def _scan(self, q: OfferQuery, now: int) -> list[_Facts]:
        """The facts of every match, in price order (no per-match allocation: a scan of
        thousands must not feed the garbage collector)."""
        self.drop_expired(now)
        want = q.gpu_model.casefold() if q.gpu_model else None
        region, max_price, executor, image = q.region, q.max_price_per_minute, q.executor, q.image
        min_vram, count_wanted, simulated_ok = q.min_vram_mib, q.gpu_count, q.include_simulated
        hits = []
        for price, _, _, f, _ in self._order:
            if max_price is not None and price > max_price:
                break  # price order: nothing further can match
            if ((region is not None and f.region != region)
                    or (executor is not None and executor not in f.executors)
                    or (f.simulated and not simulated_ok)
                    or (image is not None and not f.offer.allows_image(image))):
                continue
            for model, vram, count in f.gpus:
                if (want is None or model == want) and vram >= min_vram and count >= count_wanted:
                    hits.append(f)
                    break
        return hits

    async def wait_for(self, q: OfferQuery, *, now: Clock, count: int = 1) -> list[BookEntry]:
        """Block until at least ``count`` offers match (callers bound it with a deadline).

        Always a checkpoint, as trio's own functions are: a renter polling ``find_offers`` in a
        loop, with the offers already there, used to starve its own node (no stream answered,
        no gossip read, no discovery) for as long as it polled."""
        while True:
            hits = self.query(q, now=now())
            if len(hits) >= count:
                await trio.lowlevel.checkpoint()
                return hits
            with trio.move_on_after(1):  # wake up to re-check expiry even without news
                await self._changed.wait()


#: every reason the validator counts a refused offer under (``/metrics`` reports each, zeros included)
REFUSALS = ("oversize", "protocol_error", "invalid_request", "bad_signature", "expired", "replay", "timeout",
            "signer_not_sender", "provider_not_signer", "expiry_too_far", "simulated", "stale_seq", "origin_quota")


class OfferValidator:
    """The gossipsub topic validator for ``dgpu/offers/1``; stores what it accepts."""

    def __init__(self, book: OfferBook, *, clock: Clock, accept_simulated: bool,
                 replay_cache: ReplayCache | None = None) -> None:
        self.book = book
        self.clock = clock
        self.accept_simulated = accept_simulated
        # envelopes of offers live up to an hour; the cache bounds memory and fails closed
        self.replay_cache = replay_cache or ReplayCache(capacity=50_000)
        #: rejection reasons seen, for logs, tests and metrics
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        #: withdrawals accepted (their offers dropped)
        self.withdrawn = 0
        #: (provider, seq, received at ms) of recent accepted offers, for the benchmark/status
        self.history: deque[tuple[str, int, int]] = deque(maxlen=4096)
        #: origin -> times of its offers accepted in the last minute (LRU-bounded)
        self._recent: OrderedDict[str, list[int]] = OrderedDict()

    def _within_quota(self, origin: str, now: int) -> bool:
        times = [t for t in self._recent.pop(origin, []) if t > now - 60]
        self._recent[origin] = times
        while len(self._recent) > 4 * self.book.capacity:
            self._recent.popitem(last=False)
        if len(times) >= ORIGIN_OFFERS_PER_MINUTE:
            return False
        times.append(now)
        return True

    def _refuse(self, reason: str, msg: GossipMessage) -> bool:  # reason: one of REFUSALS
        self.rejected[reason] += 1
        log.info("rejected offer from %s via %s: %s", msg.origin, msg.forwarder, reason)
        return False

    def __call__(self, msg: GossipMessage) -> bool | Verdict:
        now = self.clock()
        if len(msg.data) > MAX_OFFER_BYTES:
            return self._refuse("oversize", msg)
        if self.book.holds_envelope(msg.data):
            # the very envelope stored (offer sync hands each again): its nonce is in the replay
            # cache, so the full check would refuse it too, after a signature check for nothing
            return self._refuse("replay", msg)
        try:
            opened = open_envelope(msg.data, OFFERS_TOPIC_ADAPTER, now=now, max_bytes=MAX_OFFER_BYTES,
                                   max_ttl=MAX_OFFER_TTL_S)
        except RemoteProtocolError as exc:
            return self._refuse(exc.reject_code, msg)
        offer = opened.message
        if msg.origin_key is None or opened.signer.raw != msg.origin_key:
            return self._refuse("signer_not_sender", msg)
        if offer.provider != opened.signer.wallet:
            return self._refuse("provider_not_signer", msg)
        if isinstance(offer, OfferWithdrawal):
            return self._withdrawal(offer, opened, msg, now)
        if offer.expires_at <= now:
            return self._refuse("expired", msg)
        if offer.expires_at > min(opened.expires_at, now + MAX_OFFER_TTL_S):
            return self._refuse("expiry_too_far", msg)
        if offer.simulated and not self.accept_simulated:
            return self._refuse("simulated", msg)
        verdict = self._admit(offer.provider, offer.seq, opened, msg, now)
        if verdict is not None:
            return verdict
        self.book.put(offer, msg.origin, now=now, forwarder=msg.forwarder, data=msg.data)
        self.accepted += 1
        self.history.append((offer.provider, offer.seq, time.time_ns() // 1_000_000))
        return True

    def _admit(self, provider: str, seq: int, opened: Opened[Any], msg: GossipMessage,
               now: int) -> bool | Verdict | None:
        """The checks an offer and a withdrawal share after their signature: ``seq``, replay and
        the origin's quota; None when the message may be applied."""
        last = self.book.last_seq(provider)
        try:
            self.replay_cache.check_and_add(opened.signer, opened.nonce, opened.expires_at, now)
        except RemoteProtocolError:
            return self._refuse("replay", msg)
        if last is not None and seq <= last:
            # normal in gossip (two paths, out of order): not stored, not relayed, no blame
            self._refuse("stale_seq", msg)
            return Verdict.IGNORE
        if not self._within_quota(provider, now):
            self._refuse("origin_quota", msg)
            return Verdict.IGNORE
        return None

    def _withdrawal(self, withdrawal: OfferWithdrawal, opened: Opened[Any], msg: GossipMessage,
                    now: int) -> bool | Verdict:
        verdict = self._admit(withdrawal.provider, withdrawal.seq, opened, msg, now)
        if verdict is not None:
            return verdict
        self.book.withdraw(withdrawal, now=now, data=msg.data)
        self.withdrawn += 1
        log.info("offer of %s withdrawn (%s)", withdrawal.provider, withdrawal.reason)
        return True
