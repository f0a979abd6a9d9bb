"""``/metrics`` of a libp2p host: connections and streams by protocol and direction, refusals by
bound, the bounds themselves, relay reservations and circuits (hop and client side).

A scrape-time collector: every figure is read from its owner when Prometheus asks (the swarm's
connection table, :class:`~dgpu.node.adapters.p2p_limits.InboundBudget`, the node's stream
refusals, :class:`~dgpu.node.adapters.p2p_relay.RelayService` and the relay client), so nothing
is counted twice and nothing can drift. Label values are bounded: directions are two, a stream's
protocol is one it was negotiated for (ours, or one we dialled), bounds are the budget's names.
Known label values are exported at zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dgpu.node.adapters.p2p import P2PNode
from dgpu.node.adapters.p2p_limits import connection_direction

__all__ = ["INBOUND_BOUNDS", "P2PCollector"]

DIRECTIONS = ("inbound", "outbound")
#: the bounds :class:`InboundBudget` refuses by (its ``refused`` keys)
INBOUND_BOUNDS = ("inbound_total", "inbound_per_ip")


def _stream_direction(stream: Any) -> str:
    initiator = getattr(getattr(stream, "muxed_stream", None), "is_initiator", None)
    return "unknown" if initiator is None else ("outbound" if initiator else "inbound")


class P2PCollector(Collector):
    def __init__(self, node: P2PNode) -> None:
        self.node = node

    def _counts(self) -> tuple[Counter[str], Counter[tuple[str, str]]]:
        connections: Counter[str] = Counter(dict.fromkeys(DIRECTIONS, 0))
        streams: Counter[tuple[str, str]] = Counter(
            {(p, d): 0 for p in self.node.config.stream_budgets for d in DIRECTIONS})
        for conns in list(self.node.host.get_network().connections.values()):
            for conn in list(conns):
                connections[connection_direction(conn) or "unknown"] += 1
                for stream in list(getattr(conn, "streams", ())):
                    protocol = stream.get_protocol()
                    streams[(str(protocol) if protocol else "negotiating", _stream_direction(stream))] += 1
        return connections, streams

    def collect(self) -> Iterator[Metric]:
        node, budget = self.node, self.node.connections
        connections, streams = self._counts()
        conn = GaugeMetricFamily("dgpu_p2p_connections", "Open libp2p connections by direction", labels=["direction"])
        for direction, n in sorted(connections.items()):
            conn.add_metric([direction], n)
        stream = GaugeMetricFamily("dgpu_p2p_streams", "Open libp2p streams by protocol and direction",
                                   labels=["protocol", "direction"])
        for (protocol, direction), n in sorted(streams.items()):
            stream.add_metric([protocol, direction], n)
        inbound = GaugeMetricFamily("dgpu_p2p_inbound_connections",
                                    "Inbound connections counted against the bounds (live, handshaking)",
                                    labels=["state"])
        inbound.add_metric(["live"], budget.live)
        inbound.add_metric(["pending"], budget.pending)
        limit = GaugeMetricFamily("dgpu_p2p_connection_limit", "Connection bounds", labels=["bound"])
        limit.add_metric(["inbound_total"], budget.bounds.max_inbound)
        limit.add_metric(["inbound_per_ip"], budget.bounds.max_per_ip)
        limit.add_metric(["total"], node.config.max_connections)
        refused = CounterMetricFamily("dgpu_p2p_connections_refused", "Inbound connections refused, by bound",
                                      labels=["bound"])
        for bound, n in sorted((dict.fromkeys(INBOUND_BOUNDS, 0) | dict(budget.refused)).items()):
            refused.add_metric([bound], n)
        stream_limit = GaugeMetricFamily("dgpu_p2p_stream_limit", "Inbound stream bounds by protocol",
                                         labels=["protocol", "scope"])
        for protocol, b in sorted(node.config.stream_budgets.items()):
            stream_limit.add_metric([protocol, "per_peer"], b.per_peer)
            stream_limit.add_metric([protocol, "total"], b.total)
        streams_refused = CounterMetricFamily("dgpu_p2p_streams_refused",
                                              "Inbound streams refused at their bound, by protocol",
                                              labels=["protocol"])
        for protocol, n in sorted((dict.fromkeys(node.config.stream_budgets, 0)
                                   | dict(node.refused_by_protocol)).items()):
            streams_refused.add_metric([protocol], n)
        yield from (conn, stream, inbound, limit, refused, stream_limit, streams_refused)
        yield from self._relay()

    def _relay(self) -> Iterator[Metric]:
        if self.node.relay_service is not None:  # the hop side (bootstrap nodes)
            for name, value in sorted(self.node.relay_service.metrics().items()):
                family: CounterMetricFamily | GaugeMetricFamily
                if name.endswith("_total"):
                    family = CounterMetricFamily(f"dgpu_{name.removesuffix('_total')}", f"Relay (hop): {name}")
                else:
                    family = GaugeMetricFamily(f"dgpu_{name}", f"Relay (hop): {name}")
                family.add_metric([], value)
                yield family
        client = self.node.relay
        if client is not None:  # our own reservations on relays, relayed dials, hole punching
            held = GaugeMetricFamily("dgpu_relay_client_reservations", "Relay reservations this node holds")
            held.add_metric([], len(client.reservations))
            yield held
            for name, value, what in (
                    ("reservations_made", client.reservations_made, "reservations obtained"),
                    ("reservation_failures", client.reservation_failures, "reservations refused or failed"),
                    ("relayed_dials", client.relayed_dials, "connections dialled through a relay"),
                    ("hole_punch_attempts", client.punch_attempts, "hole punches tried"),
                    ("hole_punch_successes", client.punch_successes, "hole punches that made a direct path")):
                counter = CounterMetricFamily(f"dgpu_relay_client_{name}", f"Relay client: {what}")
                counter.add_metric([], value)
                yield counter
