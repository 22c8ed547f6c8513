"""Counters of what the node served and ingested, exported as JSON and as Prometheus text.

The counters are plain ints under one lock (:class:`Counters`). :class:`NodeCollector` turns them
and the node's storage numbers into Prometheus metric families on demand; each app registers it
in its own ``CollectorRegistry`` (never the global one), so several nodes can live in one process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Counters:
    """Thread-safe request / byte counters of one node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.errors_by_code: dict[str, int] = {}
        self.bytes_served = 0
        self.bytes_sent_zerocopy = 0
        self.blocks_served = 0
        self.bytes_ingested_by_source: dict[str, int] = {}
        self.corrupt_blocks = 0
        self.repaired_blocks = 0
        self.bytes_pulled_by_source: dict[str, int] = {}
        self.bytes_pulled_kept = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_evictions = 0
        self.cache_evicted_bytes = 0
        # Request-time migration (edge_node.migrate): blocks pulled from a peer edge to serve a
        # client (in), and blocks served to a peer edge that migrates them (out).
        self.migrated_in_blocks = 0
        self.migrated_in_bytes = 0
        self.migrated_out_blocks = 0
        self.migrated_out_bytes = 0

    def add_request(self, *, status_code: int) -> None:
        with self._lock:
            self.requests += 1
            if status_code >= 400:
                self.errors += 1

    def add_error_code(self, code: str) -> None:
        with self._lock:
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    def add_served(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_served += nbytes

    def add_zerocopy(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_sent_zerocopy += nbytes

    def add_blocks_served(self, count: int) -> None:
        with self._lock:
            self.blocks_served += count

    def add_ingested(self, source: str, nbytes: int) -> None:
        with self._lock:
            self.bytes_ingested_by_source[source] = (
                self.bytes_ingested_by_source.get(source, 0) + nbytes
            )

    def add_pulled(self, source: str, nbytes: int) -> None:
        """Block bytes fetched for a Hub request (pull-through), by source."""
        with self._lock:
            self.bytes_pulled_by_source[source] = (
                self.bytes_pulled_by_source.get(source, 0) + nbytes
            )

    def add_pulled_kept(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_pulled_kept += nbytes

    def add_cache_lookup(self, *, hit: bool) -> None:
        """One request on an on-demand node (edge_node.ondemand): a hit or a miss."""
        with self._lock:
            if hit:
                self.cache_hits += 1
            else:
                self.cache_misses += 1

    def add_cache_evictions(self, models: int, nbytes: int) -> None:
        with self._lock:
            self.cache_evictions += models
            self.cache_evicted_bytes += nbytes

    def add_migrated_in(self, nbytes: int) -> None:
        with self._lock:
            self.migrated_in_blocks += 1
            self.migrated_in_bytes += nbytes

    def add_migrated_out(self, blocks: int, nbytes: int) -> None:
        with self._lock:
            self.migrated_out_blocks += blocks
            self.migrated_out_bytes += nbytes

    def add_corrupt(self) -> None:
        with self._lock:
            self.corrupt_blocks += 1

    def add_repaired(self) -> None:
        with self._lock:
            self.repaired_blocks += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "errors": self.errors,
                "errors_by_code": dict(sorted(self.errors_by_code.items())),
                "bytes_served": self.bytes_served,
                "bytes_sent_zerocopy": self.bytes_sent_zerocopy,
                "blocks_served": self.blocks_served,
                "bytes_ingested_by_source": dict(sorted(self.bytes_ingested_by_source.items())),
                "corrupt_blocks": self.corrupt_blocks,
                "repaired_blocks": self.repaired_blocks,
                "bytes_pulled_by_source": dict(sorted(self.bytes_pulled_by_source.items())),
                "bytes_pulled_kept": self.bytes_pulled_kept,
                "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "cache_evictions": self.cache_evictions,
                "cache_evicted_bytes": self.cache_evicted_bytes,
                "migrated_in_blocks": self.migrated_in_blocks,
                "migrated_in_bytes": self.migrated_in_bytes,
                "migrated_out_blocks": self.migrated_out_blocks,
                "migrated_out_bytes": self.migrated_out_bytes,
            }


class NodeCollector(Collector):
    """Prometheus view of ``stats()`` (the same dict ``GET /v1/stats`` returns)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        node = str(s["node_id"])

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["node_id"])
            g.add_metric([node], value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["node_id"])
            c.add_metric([node], value)
            return c

        capacity = s["capacity_bytes"]
        yield gauge("edge_capacity_bytes", "Store capacity (-1: unbounded)", capacity or -1)
        yield gauge("edge_physical_bytes", "Bytes of blocks stored", s["physical_bytes"])
        yield gauge("edge_logical_bytes", "Bytes of complete models held", s["logical_bytes"])
        yield gauge("edge_dedup_ratio", "logical / physical bytes", s["dedup_ratio"])
        yield gauge("edge_blocks", "Blocks stored", s["blocks"])
        yield gauge("edge_models", "Complete models held", len(s["models"]))
        yield counter("edge_requests", "HTTP requests handled", s["requests"])
        yield counter("edge_errors", "HTTP responses with status >= 400", s["errors"])
        yield counter("edge_served_bytes", "Body bytes served", s["bytes_served"])
        yield counter(
            "edge_zerocopy_bytes", "Body bytes sent with sendfile", s["bytes_sent_zerocopy"]
        )
        yield counter("edge_blocks_served", "Whole blocks served", s["blocks_served"])
        yield counter("edge_corrupt_blocks", "Blocks found corrupt", s["corrupt_blocks"])
        yield counter("edge_repaired_blocks", "Corrupt blocks refetched", s["repaired_blocks"])
        yield counter("edge_cache_hits", "On-demand requests served from store", s["cache_hits"])
        yield counter("edge_cache_misses", "On-demand requests pulled through", s["cache_misses"])
        yield counter("edge_cache_evictions", "Models evicted by the policy", s["cache_evictions"])
        for way in ("in", "out"):
            what = "pulled from a peer to serve" if way == "in" else "served to a peer migrating"
            for unit in ("blocks", "bytes"):
                name = f"migrated_{way}_{unit}"
                yield counter(f"edge_{name}", f"{unit.capitalize()} {what}", s[name])
        ingested = CounterMetricFamily(
            "edge_ingested_bytes", "Block bytes ingested by source", labels=["node_id", "source"]
        )
        for source, nbytes in s["bytes_ingested_by_source"].items():
            ingested.add_metric([node, source], nbytes)
        yield ingested
        pulled = CounterMetricFamily(
            "edge_pulled_bytes", "Block bytes pulled for Hub requests", labels=["node_id", "source"]
        )
        for source, nbytes in s["bytes_pulled_by_source"].items():
            pulled.add_metric([node, source], nbytes)
        yield pulled
        by_code = CounterMetricFamily(
            "edge_error_codes", "Error responses by error code", labels=["node_id", "code"]
        )
        for code, count in s["errors_by_code"].items():
            by_code.add_metric([node, code], count)
        yield by_code


def make_registry(stats: Callable[[], Mapping[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(stats))
    return registry
