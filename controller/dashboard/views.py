"""What the dashboard shows, computed from controller state (pure: no Redis, no HTTP).

- :func:`fetch_entry`: one client demand report as the fetch log stores it.
- :func:`fetch_source`: which source class served a fetch (``local``, ``edge``, ``peer``,
  ``origin``, ``error``), judged from the bytes it reported per source.
- :func:`hit_ratio_series`: the measured hit ratio after each logged report.
- :func:`storage_view`: per edge node, its models' blocks grouped by sharing set.
- :func:`plan_summary`: a placement record reduced to what moved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from controller.state import CatalogueEntry, NodeRecord
from controller.topology import Topology
from core.blocks import group_by_sharing

# Fetch reports the log keeps (newest first).
FETCH_LOG_KEEP = 500


def fetch_entry(
    *,
    at_s: float,
    model_id: str,
    area_id: str,
    outcome: str,
    seconds: float | None,
    bytes_by_kind: Mapping[str, int],
    bytes_by_node: Mapping[str, int],
) -> dict[str, Any]:
    """A demand report as the fetch log keeps it (``bytes_by_node``: edge node id -> bytes)."""
    return {
        "at": round(at_s, 3),
        "model_id": model_id,
        "area_id": area_id,
        "outcome": outcome,
        "seconds": seconds,
        "bytes_by_kind": {k: int(v) for k, v in bytes_by_kind.items() if v},
        "bytes_by_node": {k: int(v) for k, v in bytes_by_node.items() if v},
    }


def home_node(topology: Topology, nodes: Sequence[NodeRecord], area_id: str | None) -> str | None:
    """The live node nearest to ``area_id`` (ties by id); None for an area the topology lacks."""
    area = topology.areas.get(area_id) if area_id else None
    if area is None or not nodes:
        return None

    def distance(node: NodeRecord) -> tuple[float, str]:
        x, y = topology.positions.get(node.node_id, node.position)
        return math.hypot(x - area.x_m, y - area.y_m), node.node_id

    return min(nodes, key=distance).node_id


def fetch_source(entry: Mapping[str, Any], home: str | None) -> str:
    """The source class of a logged fetch.

    ``error``: the fetch failed. ``origin``: some byte came from the origin. ``peer``: some edge
    byte came from a node other than the area's nearest one (``home``), or, with no known home,
    from more than one edge node. ``edge``: every network byte came from one edge node (the
    home one when known). ``local``: everything came from the device cache.
    """
    if entry.get("outcome") == "error":
        return "error"
    kinds = entry.get("bytes_by_kind", {})
    if kinds.get("origin", 0):
        return "origin"
    by_node = {n: b for n, b in entry.get("bytes_by_node", {}).items() if b}
    if by_node:
        if (home is not None and set(by_node) != {home}) or (home is None and len(by_node) > 1):
            return "peer"
        return "edge"
    if kinds.get("edge", 0) or kinds.get("other", 0):
        return "edge"
    return "local"


def hit_ratio_series(
    fetches: Sequence[Mapping[str, Any]], totals: Mapping[str, int]
) -> list[dict[str, Any]]:
    """``[{"at", "requests", "hit_ratio"}]`` oldest first: the measured hit ratio (hits over all
    reported requests) right after each logged report, walking back from the current totals
    (the log may hold only the newest reports; the counters hold all of them)."""
    requests = int(totals.get("requests", 0))
    hits = int(totals.get("hit", 0))
    out: list[dict[str, Any]] = []
    for entry in fetches:  # newest first
        if requests <= 0:
            break
        out.append({"at": entry["at"], "requests": requests, "hit_ratio": hits / requests})
        requests -= 1
        if entry.get("outcome") == "hit":
            hits -= 1
    out.reverse()
    return out


def storage_view(node: NodeRecord, catalogue: Mapping[str, CatalogueEntry]) -> dict[str, Any]:
    """The node's confirmed models and their blocks grouped by sharing set among those models.

    ``segments``: one per set of held models that use exactly the same blocks (largest first);
    a segment with two or more models is storage that sharing saves. ``physical_bytes`` is the
    union of the held models' blocks as the catalogue sizes them (the node's own report is
    ``reported_physical_bytes``), ``logical_bytes`` the sum of their full sizes.
    """
    entries = [catalogue[m] for m in node.models if m in catalogue]
    manifests = [e.manifest for e in entries]
    groups = group_by_sharing(manifests)
    groups = sorted(
        groups, key=lambda g: (len(g.model_ids) < 2, -len(g.model_ids), -g.size_bytes, g.pb_id)
    )
    segments: list[dict[str, Any]] = [
        {
            "models": sorted(g.model_ids),
            "bytes": g.size_bytes,
            "blocks": len(g.block_ids),
            "shared": len(g.model_ids) > 1,
        }
        for g in groups
    ]
    physical = sum(g.size_bytes for g in groups)
    logical = sum(e.total_bytes for e in entries)
    return {
        "node_id": node.node_id,
        "url": node.url,
        "capacity_bytes": node.capacity_bytes if node.capacity_bytes >= 0 else None,
        "position": list(node.position),
        "models": list(node.models),
        "unknown_models": [m for m in node.models if m not in catalogue],
        "reported_physical_bytes": node.physical_bytes,
        "physical_bytes": physical,
        "logical_bytes": logical,
        "shared_bytes": sum(g.size_bytes for g in groups if len(g.model_ids) > 1),
        "savings": (1 - physical / logical) if logical else 0.0,
        "segments": segments,
        "plan_version": node.plan_version,
    }


def plan_summary(record: Mapping[str, Any], origin_url: str) -> dict[str, Any]:
    """A placement record as the plan log keeps it: per node the push status and the bytes the
    node fetched for it (``peers``: migrated from other edge nodes, ``origin``), and totals."""
    origin = origin_url.rstrip("/")
    nodes: dict[str, dict[str, Any]] = {}
    totals = {"from_peers": 0, "from_origin": 0, "evicted": 0}
    for node_id, push in sorted(dict(record.get("push", {})).items()):
        moved = {"from_peers": 0, "from_origin": 0}
        for url, nbytes in dict(push.get("fetched_bytes_by_source", {})).items():
            key = "from_origin" if url.rstrip("/") == origin else "from_peers"
            moved[key] += int(nbytes)
        evicted = int(push.get("evicted_bytes", 0) or 0)
        nodes[node_id] = {"status": push.get("status"), **moved, "evicted": evicted}
        totals["from_peers"] += moved["from_peers"]
        totals["from_origin"] += moved["from_origin"]
        totals["evicted"] += evicted
    servers = dict(record.get("servers", {}))
    return {
        "version": record.get("version"),
        "solver": record.get("solver"),
        "status": record.get("status"),
        "hit_ratio": record.get("hit_ratio"),
        "planned_at": record.get("planned_at"),
        "trigger": record.get("trigger"),
        "models": {n: list(s.get("models", [])) for n, s in sorted(servers.items())},
        "nodes": nodes,
        "moved_bytes": totals,
    }
