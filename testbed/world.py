"""The testbed's world: the site layout with the delay model's radio (``trimcache.world/v1``).

One world for the simulator and the testbed. :func:`build_world` takes the layout
(:mod:`testbed.topology`), the downlink channel, the CoMP clusters and the wired links, and asks
the reference delay model (:class:`controller.delay.model.DelayInstance`) for every rate the
edges emulate: per (edge, user area) the rate of that edge alone, and per cluster, area and
transmitter set the joint (CoMP) rate. Nothing here re-derives a formula of the model.
:func:`world_problem` goes the other way: the same geometry, channel, clusters and links as a
:class:`controller.delay.problem.DelayProblem` for a given library and slots, so the simulator's
prediction is computed for exactly the world the testbed runs. The format and the lookups the
edges use are :mod:`core.world`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.delay.model import DelayInstance
from controller.delay.problem import Channel, DelayProblem
from core.fsutil import atomic_write_json
from core.world import SCHEMA, Link, World, transmitter_key
from testbed.topology import EdgeSite, SiteLayout, UserArea, grid_topology, node_id_for

#: Largest CoMP cluster (its transmitter subsets are listed: 2^k - 1 per area).
MAX_CLUSTER = 6
#: The reference channel of the delay model (docs/delay-model.md): 20 MHz shared downlink.
DEFAULT_CHANNEL = Channel()
DEFAULT_BACKHAUL = Link(rate_bytes_per_s=12.5e6, latency_ms=30.0)
DEFAULT_EDGE_LINKS = Link(rate_bytes_per_s=125e6, latency_ms=2.0)


def line_clusters(layout: SiteLayout, size: int) -> dict[str, list[str]]:
    """Consecutive edges in clusters of ``size`` (``c1``, ``c2``, ...); 1: no CoMP.

    >>> from testbed.topology import grid_topology
    >>> line_clusters(grid_topology(3), 2)
    {'c1': ['edge-1', 'edge-2'], 'c2': ['edge-3']}
    """
    if not 1 <= size <= MAX_CLUSTER:
        raise ValueError(f"cluster size must be in [1, {MAX_CLUSTER}], got {size}")
    nodes = [site.node_id for site in layout.edges]
    return {f"c{i // size + 1}": nodes[i : i + size] for i in range(0, len(nodes), size)}


def _instance(
    layout: SiteLayout, channel: Channel, clusters: Mapping[str, Sequence[str]] | None
) -> DelayInstance:
    """A one-block, one-slot problem over the layout: only its geometry is used."""
    first = layout.areas[0].area_id
    problem = DelayProblem(
        blocks={"b": 1},
        models={"m": ["b"]},
        servers={s.node_id: {"capacity": 0, "position": list(s.position)} for s in layout.edges},
        users={a.area_id: list(a.position) for a in layout.areas},
        channel=channel,
        backhaul_bytes_per_s=1.0,
        migration_bytes_per_s=1.0,
        slots=[{first: "m"}],
        clusters=clusters or {},
    )
    return DelayInstance(problem)


def build_world(
    layout: SiteLayout,
    *,
    channel: Channel = DEFAULT_CHANNEL,
    clusters: Mapping[str, Sequence[str]] | None = None,
    radio_latency_ms: float = 5.0,
    backhaul: Link = DEFAULT_BACKHAUL,
    edge_links: Link = DEFAULT_EDGE_LINKS,
) -> dict[str, Any]:
    """The world document of ``layout`` (validated by :meth:`core.world.World.from_json`).

    Raises:
        ValueError: a user area no edge covers, a bad cluster, a cluster above
            :data:`MAX_CLUSTER` edges.
    """
    clusters = {c: sorted(ns) for c, ns in (clusters or {}).items()}
    for cluster_id, members in clusters.items():
        if len(members) > MAX_CLUSTER:
            raise ValueError(f"cluster {cluster_id!r} has more than {MAX_CLUSTER} edges")
    alone = _instance(layout, channel, None)  # every covering edge: the per-pair rates
    rates: dict[str, dict[str, float]] = {}
    for area in layout.areas:
        for node in alone.cover[area.area_id]:
            rates.setdefault(node, {})[area.area_id] = alone.rate_bytes_per_s(area.area_id, [node])
    cluster_of = {n: c for c, ns in clusters.items() for n in ns}
    all_clusters = {**clusters, **{n: [n] for n in alone.nodes if n not in cluster_of}}
    joint: dict[str, dict[str, dict[str, float]]] = {}
    for cluster_id, members in sorted(all_clusters.items()):
        for area in layout.areas:
            near = [n for n in members if area.area_id in rates.get(n, {})]
            by_set: dict[str, float] = {}
            for k in range(1, len(near) + 1):
                for subset in itertools.combinations(near, k):
                    # Cluster-restricted K_u is the model's; here the set is the transmitters.
                    by_set[transmitter_key(subset)] = alone.rate_bytes_per_s(area.area_id, subset)
            if by_set:
                joint.setdefault(cluster_id, {})[area.area_id] = by_set
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "channel": {
            "tx_power_dbm": channel.tx_power_dbm,
            "bandwidth_hz": channel.bandwidth_hz,
            "noise_dbm_per_hz": channel.noise_dbm_per_hz,
            "coverage_m": channel.coverage_m,
        },
        "edges": [
            {
                "node_id": s.node_id,
                "position": [s.x_m, s.y_m],
                "cluster": cluster_of.get(s.node_id, s.node_id),
            }
            for s in layout.edges
        ],
        "areas": layout.to_json()["areas"],
        "clusters": all_clusters,
        "rates": rates,
        "joint_rates": joint,
        "radio": {"latency_ms": radio_latency_ms},
        "backhaul": backhaul.to_json(),
        "edge_links": edge_links.to_json(),
    }
    World.from_json(doc)
    return doc


def write_world(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write a world document atomically (for ``EDGE_WORLD_FILE``)."""
    World.from_json(doc)
    atomic_write_json(path, dict(doc))
    return path


def world_problem(
    world: World,
    *,
    blocks: Mapping[str, int],
    models: Mapping[str, Sequence[str]],
    capacities: Mapping[str, int],
    slots: Sequence[Mapping[str, str]],
) -> DelayProblem:
    """The delay problem of this world for a library and slots: a user id is an area id,
    or ``<area_id>#<k>`` for the k-th user standing in that area."""
    doc = world.doc
    channel = Channel(**doc["channel"])
    positions = {a["area_id"]: a["position"] for a in doc["areas"]}
    users = {u: positions[u.split("#", 1)[0]] for s in slots for u in s}
    backhaul = world.backhaul.rate_bytes_per_s or 1e12
    migration = world.edge_links.rate_bytes_per_s or 1e12
    return DelayProblem(
        blocks=blocks,
        models=models,
        servers={
            e["node_id"]: {"capacity": capacities.get(e["node_id"], 0), "position": e["position"]}
            for e in doc["edges"]
        },
        users=users,
        channel=channel,
        backhaul_bytes_per_s=backhaul,
        migration_bytes_per_s=migration,
        slots=slots,
        clusters={c: ns for c, ns in doc["clusters"].items() if len(ns) > 1},
    )


def layout_of(world: World) -> SiteLayout:
    """The site layout a world describes (positions of its edges and areas)."""
    doc = world.doc
    edges = tuple(
        EdgeSite(e["node_id"], float(e["position"][0]), float(e["position"][1]))
        for e in doc["edges"]
    )
    areas = tuple(
        UserArea(
            a["area_id"],
            float(a["position"][0]),
            float(a["position"][1]),
            near=a.get("near") or edges[0].node_id,
        )
        for a in doc["areas"]
    )
    return SiteLayout(edges, areas)


def prepare_world(
    source: Path | None,
    *,
    edges: int,
    cluster_size: int,
    edge_urls: Sequence[str],
    path: Path,
) -> World:
    """The world of a ``testbed up``: ``source`` (a world file) or, None, the default grid
    with clusters of ``cluster_size``; the edges' URLs are recorded and the result written
    to ``path`` (what ``EDGE_WORLD_FILE`` names).

    Raises:
        ValueError: an unusable file, or one whose edges are not ``edge-1..edge-N``.
    """
    if source is None:
        layout = grid_topology(edges)
        doc = build_world(layout, clusters=line_clusters(layout, cluster_size))
    else:
        doc = World.load(source).to_json()
    ids = [e["node_id"] for e in doc["edges"]]
    expected = [node_id_for(i) for i in range(edges)]
    if ids != expected:
        raise ValueError(
            f"world {source}: its edges are {ids}, the testbed starts {expected} (--edges)"
        )
    doc = {
        **doc,
        "edges": [{**e, "url": url} for e, url in zip(doc["edges"], edge_urls, strict=True)],
    }
    write_world(path, doc)
    return World.from_json(doc)


def world_env(world_file: Path, *, broadcast_window_s: float, medium_dir: Path) -> dict[str, str]:
    """The edge settings that make an edge emulate ``world_file`` (edge_node.radio)."""
    return {
        "EDGE_WORLD_FILE": str(world_file),
        "EDGE_BROADCAST_WINDOW_S": f"{broadcast_window_s:g}",
        "EDGE_MEDIUM_DIR": str(medium_dir),
    }
