"""Routes: for a client and a model, the ordered sources of every block (pure; no I/O).

A route names an edge node for a block only when the node's *confirmed* holdings include it:
the complete models it reported in its last heartbeat or plan response, expanded to blocks
through the catalogue's manifests. The intended placement alone never puts a node in a route.
Edge sources are ordered by the expected time to deliver the whole model to the client
(:func:`controller.topology.delivery_ms`), ties by node id; the origin is always last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.state import CatalogueEntry, NodeRecord
from controller.topology import DEFAULT_AREA_OFFSET_M, Topology, delivery_ms
from core.wire import RouteSource


def held_blocks(node: NodeRecord, blocks_by_model: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """Blocks a node has confirmed: the union of the blocks of its reported complete models,
    minus models a pushed plan is dropping (they may be evicted any moment)."""
    held: set[str] = set()
    for model_id in node.serving_models:
        held |= blocks_by_model.get(model_id, frozenset())
    return frozenset(held)


def build_route(
    entry: CatalogueEntry,
    *,
    nodes: Sequence[NodeRecord],
    blocks_by_model: Mapping[str, frozenset[str]],
    topology: Topology,
    point: tuple[float, float] | None,
    origin_url: str,
) -> dict[str, Any]:
    """The route document of ``GET /v1/routes/{model_id}`` (see docs/api.md).

    ``point`` is the client's position (from its area or x/y); ``None`` ranks edges by how
    many of the model's bytes they hold, with ``expected_ms`` the in-coverage radio time.
    """
    manifest = entry.manifest
    sizes: dict[str, int] = dict(manifest.block_sizes().items())
    model_bytes = int(entry.total_bytes)
    holders: dict[str, frozenset[str]] = {}
    for node in nodes:
        have = held_blocks(node, blocks_by_model) & sizes.keys()
        if have:
            holders[node.node_id] = frozenset(have)
    by_id = {n.node_id: n for n in nodes}
    positions = {n: topology.positions.get(n, by_id[n].position) for n in holders}
    if point is not None:
        times = delivery_ms(topology, point, positions, model_bytes)
        order = sorted(holders, key=lambda n: (times[n], n))
    else:
        # No position: every holder as if the client stood next to it.
        here = {n: (p[0] + DEFAULT_AREA_OFFSET_M, p[1]) for n, p in positions.items()}
        times = {
            n: delivery_ms(topology, here[n], {n: positions[n]}, model_bytes)[n] for n in holders
        }
        held_bytes = {n: sum(sizes[b] for b in holders[n]) for n in holders}
        order = sorted(holders, key=lambda n: (-held_bytes[n], n))
    sources = [
        RouteSource(url=by_id[n].url, kind="edge", node_id=n, expected_ms=round(times[n], 3))
        for n in order
    ]
    sources.append(RouteSource(url=origin_url, kind="origin"))
    origin_index = len(sources) - 1
    blocks = {
        block_id: [i for i, n in enumerate(order) if block_id in holders[n]] + [origin_index]
        for block_id in sizes
    }
    return {
        "model_id": entry.model_id,
        "manifest": manifest.to_dict(),
        "sources": [s.model_dump(exclude_none=True) for s in sources],
        "blocks": blocks,
    }
