"""The world document (``trimcache.world/v1``): the testbed's radio, backhaul and edge links.

One world for the simulator and the testbed: ``testbed/world.py`` writes this document from the
site layout with the reference delay model (``controller/delay/model.py`` computes every rate),
and each edge node reads it (``EDGE_WORLD_FILE``) to emulate its share of it
(:mod:`edge_node.radio`). This module owns the format and the lookups; it computes nothing::

    {"schema": "trimcache.world/v1",
     "channel": {"tx_power_dbm": 30, "bandwidth_hz": 20e6, "noise_dbm_per_hz": -174,
                 "coverage_m": 300},
     "edges": [{"node_id": "edge-1", "position": [0, 0], "cluster": "c1",
                "url": "http://127.0.0.1:8001"}],                 # url: optional
     "areas": [{"area_id": "area-1", "position": [60, 40], "near": "edge-1"}],
     "clusters": {"c1": ["edge-1"]},
     "rates": {"edge-1": {"area-1": 3.8e7}},          # bytes/s, one transmitter, covered pairs
     "joint_rates": {"c1": {"area-1": {"edge-1": 3.8e7}}},   # transmitter set -> bytes/s
     "radio": {"latency_ms": 5.0},
     "backhaul": {"rate_bytes_per_s": 12.5e6, "latency_ms": 30.0},
     "edge_links": {"rate_bytes_per_s": 125e6, "latency_ms": 2.0}}

- ``rates[n][a]``: the rate edge n alone gives user area a (only pairs within coverage).
- ``joint_rates[c][a][set]``: the CoMP rate when the edges of ``set`` (node ids of cluster c,
  sorted, joined by ``+``) jointly send to area a; every non-empty subset of c's edges that
  cover a is listed.
- The downlink of a cluster is one shared medium: airtime, not bytes, is what it runs out of.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = "trimcache.world/v1"
SET_SEPARATOR = "+"


def transmitter_key(nodes: Collection[str]) -> str:
    """The ``joint_rates`` key of a transmitter set: sorted node ids joined by ``+``.

    >>> transmitter_key(["edge-2", "edge-1"])
    'edge-1+edge-2'
    """
    return SET_SEPARATOR.join(sorted(nodes))


@dataclass(frozen=True, slots=True)
class Link:
    """An emulated wired link: its rate (None: not limited) and latency."""

    rate_bytes_per_s: float | None = None
    latency_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"rate_bytes_per_s": self.rate_bytes_per_s, "latency_ms": self.latency_ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, what: str) -> Link:
        if data is None:
            return cls()
        rate = data.get("rate_bytes_per_s")
        latency = data.get("latency_ms", 0.0)
        if rate is not None and not (_number(rate) and rate > 0):
            raise ValueError(f"world: {what}.rate_bytes_per_s must be > 0 or null, got {rate!r}")
        if not (_number(latency) and latency >= 0):
            raise ValueError(f"world: {what}.latency_ms must be >= 0, got {latency!r}")
        return cls(None if rate is None else float(rate), float(latency))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class World:
    """A parsed world document (see the module docstring); :meth:`from_json` validates."""

    doc: Mapping[str, Any]
    cluster_of: Mapping[str, str]
    near_area: Mapping[str, str]  # edge -> the area next to it
    node_of_url: Mapping[str, str]  # an edge's URL (``edges[].url``, optional) -> its id
    rates: Mapping[str, Mapping[str, float]]
    joint_rates: Mapping[str, Mapping[str, Mapping[str, float]]]
    radio_latency_ms: float
    backhaul: Link
    edge_links: Link

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> World:
        """Parse and check a world document.

        Raises:
            ValueError: wrong schema, unknown references or bad numbers (names the entry).
        """
        if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
            raise ValueError(f"world: expected schema {SCHEMA!r}")
        edges = [e["node_id"] for e in doc.get("edges", [])]
        areas = [a["area_id"] for a in doc.get("areas", [])]
        if not edges:
            raise ValueError("world: no edges")
        clusters: Mapping[str, list[str]] = doc.get("clusters") or {}
        cluster_of: dict[str, str] = {}
        for cluster_id, members in clusters.items():
            for node in members:
                if node not in edges:
                    raise ValueError(f"world: cluster {cluster_id!r} names unknown edge {node!r}")
                if node in cluster_of:
                    raise ValueError(f"world: edge {node!r} is in two clusters")
                cluster_of[node] = cluster_id
        for node in edges:
            cluster_of.setdefault(node, node)  # no cluster: a cluster of its own
        rates: dict[str, dict[str, float]] = {}
        for node, row in (doc.get("rates") or {}).items():
            if node not in edges:
                raise ValueError(f"world: rates name unknown edge {node!r}")
            for area, rate in row.items():
                if area not in areas:
                    raise ValueError(f"world: rates[{node!r}] names unknown area {area!r}")
                if not (_number(rate) and rate > 0):
                    raise ValueError(f"world: rates[{node!r}][{area!r}] must be > 0")
                rates.setdefault(node, {})[area] = float(rate)
        joint: dict[str, dict[str, dict[str, float]]] = {}
        for cluster_id, by_area in (doc.get("joint_rates") or {}).items():
            for area, by_set in by_area.items():
                for key, rate in by_set.items():
                    if not (_number(rate) and rate > 0):
                        raise ValueError(
                            f"world: joint_rates[{cluster_id!r}][{area!r}][{key!r}] must be > 0"
                        )
                    joint.setdefault(cluster_id, {}).setdefault(area, {})[key] = float(rate)
        near = {a["near"]: a["area_id"] for a in doc.get("areas", []) if a.get("near")}
        latency = (doc.get("radio") or {}).get("latency_ms", 0.0)
        if not (_number(latency) and latency >= 0):
            raise ValueError(f"world: radio.latency_ms must be >= 0, got {latency!r}")
        return cls(
            doc=doc,
            cluster_of=cluster_of,
            near_area=near,
            node_of_url={
                str(e["url"]).rstrip("/"): e["node_id"] for e in doc["edges"] if e.get("url")
            },
            rates=rates,
            joint_rates=joint,
            radio_latency_ms=float(latency),
            backhaul=Link.from_json(doc.get("backhaul"), "backhaul"),
            edge_links=Link.from_json(doc.get("edge_links"), "edge_links"),
        )

    @classmethod
    def load(cls, path: Path) -> World:
        """Read and parse a world file (ValueError naming the file when it is unusable)."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"world file {path}: {exc}") from exc
        return cls.from_json(doc)

    def to_json(self) -> dict[str, Any]:
        return dict(self.doc)

    @property
    def areas(self) -> tuple[str, ...]:
        return tuple(a["area_id"] for a in self.doc.get("areas", []))

    def members(self, cluster_id: str) -> tuple[str, ...]:
        """The edges of a cluster, sorted."""
        return tuple(sorted(n for n, c in self.cluster_of.items() if c == cluster_id))

    def rate(self, area: str, transmitters: Collection[str], *, serving: str) -> float:
        """Bytes/s to ``area`` when ``transmitters`` send jointly (edge ``serving`` among them).

        The transmitters that count are those of ``serving``'s cluster that cover ``area``
        (the delay model's rule); when none covers it, ``serving``'s own rate is used, and when
        ``serving`` does not cover the area either, its weakest covered rate (the edge reaches
        it at the coverage edge at best).
        """
        cluster = self.cluster_of[serving]
        covering = {
            n
            for n in set(transmitters) | {serving}
            if self.cluster_of.get(n) == cluster and area in self.rates.get(n, {})
        }
        by_set = self.joint_rates.get(cluster, {}).get(area, {})
        if covering:
            joint = by_set.get(transmitter_key(covering))
            if joint is not None:
                return joint
            best = max(self.rates[n][area] for n in covering)
            return best
        own = self.rates.get(serving, {})
        if own:
            return min(own.values())
        raise ValueError(f"world: edge {serving!r} covers no user area")
