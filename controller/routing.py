"""Routes: for a client and a model, the ordered sources of every block (pure; no I/O).

A route names an edge node for a block only when the node's *confirmed* holdings include it:
the complete models it reported in its last heartbeat or plan response, expanded to blocks
through the catalogue's manifests. The intended placement alone never puts a node in a route.
Edge sources are ordered by the expected time to deliver the whole model to the client
(:func:`controller.topology.delivery_ms`), ties by node id; the origin is always last.

On-demand nodes (``cache_policy`` ``lru``/``lfu``) are sources of the models they confirmed
holding whole (not of the blocks those share with other models: asking such a node for a model
it does not cache would not match the policy's model of a hit), and one more way: a client with
a position gets its *home* on-demand node (the one with the least delivery time, ties by node
id) as a source of every block of the model, after the nodes confirmed to hold that block. The
home node pulls what it lacks through and caches the model (edge_node.ondemand), as the
placement problem's ``lru``/``lfu`` replay inserts a missed model at the user's nearest
reachable server (controller.placement.online).

Request-time migration (:mod:`controller.delay_routing`, ``migration``: setting
``CONTROLLER_MIGRATION``, on with the delay objective): a client with a position has a
*serving edge* (the nearest planned node). ``delivery[block]`` says per block which source
serves it and how (``held`` | ``migrate`` | ``origin``), by the delay model's expected time;
when migrating is fastest, the serving edge is listed first in ``blocks[block]`` (it pulls the
block from ``migrate_from`` over the edge-to-edge link while it sends it), before the holders;
a block to fetch from the cloud is ``origin`` *via the serving edge*, listed first too (it pulls
the block over the backhaul and sends it on its radio, the delay model's cloud path).
With ``objective="delay"`` every block's candidates are ordered by the same per-block expected
delay instead of by the whole model's delivery time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller import delay_routing
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


def home_node(
    nodes: Sequence[NodeRecord],
    topology: Topology,
    point: tuple[float, float] | None,
    model_bytes: int,
) -> str | None:
    """The on-demand node a client at ``point`` sends its misses to: the least delivery time
    for the model, ties by node id (None: no position, or no on-demand node)."""
    on_demand = {
        n.node_id: topology.positions.get(n.node_id, n.position) for n in nodes if n.cache_policy
    }
    if point is None or not on_demand:
        return None
    times = delivery_ms(topology, point, on_demand, model_bytes)
    return min(times, key=lambda n: (times[n], n))


def build_route(
    entry: CatalogueEntry,
    *,
    nodes: Sequence[NodeRecord],
    blocks_by_model: Mapping[str, frozenset[str]],
    topology: Topology,
    point: tuple[float, float] | None,
    origin_url: str,
    objective: str = "hit-ratio",
    migration: bool = False,
    base_model_id: str | None = None,
) -> dict[str, Any]:
    """The route document of ``GET /v1/routes/{model_id}`` (see docs/api.md).

    ``point`` is the client's position (from its area or x/y); ``None`` ranks edges by how
    many of the model's bytes they hold, with ``expected_ms`` the in-coverage radio time.
    ``base_model_id``: for a LoRA adapter, the catalogued model of its base
    (:func:`controller.adapters.base_models`), named in the route so the client fetches both
    at once.
    """
    manifest = entry.manifest
    sizes: dict[str, int] = dict(manifest.block_sizes().items())
    model_bytes = int(entry.total_bytes)
    holders: dict[str, frozenset[str]] = {}
    for node in nodes:
        if node.cache_policy:  # on demand: a source of the models it holds whole, only
            have = frozenset(sizes) if entry.model_id in node.serving_models else frozenset()
        else:
            have = held_blocks(node, blocks_by_model) & sizes.keys()
        if have:
            holders[node.node_id] = frozenset(have)
    by_id = {n.node_id: n for n in nodes}
    home = home_node(nodes, topology, point, model_bytes)
    if home is not None:
        holders.setdefault(home, frozenset())
    per_block = point is not None and (migration or objective == "delay")
    everyone = (
        {n.node_id: topology.positions.get(n.node_id, n.position) for n in nodes}
        if per_block
        else {}
    )
    serving = delay_routing.serving_edge(everyone, point) if migration and per_block else None
    if serving is not None and by_id[serving].cache_policy:
        serving = None  # an on-demand home pulls through itself
    options: dict[str, list[delay_routing.BlockOption]] = {}
    costs: delay_routing.RouteCosts | None = None
    # Per-block delivery: with migration or the delay objective (otherwise every block's first
    # candidate simply holds it, or is the origin, and routes stay as they were).
    if per_block and point is not None:
        costs = delay_routing.route_costs(topology, point, everyone, serving)
        by_holders: dict[tuple[str, ...], list[delay_routing.BlockOption]] = {}
        by_id_order = sorted(holders)
        for block_id in sizes:
            key = tuple([n for n in by_id_order if block_id in holders[n]])
            found = by_holders.get(key)
            if found is None:
                found = by_holders[key] = delay_routing.block_options(costs, key)
            options[block_id] = found
    # The serving edge is a source when it migrates some block (a delay route: when it could).
    considered = {b: opts if objective == "delay" else opts[:1] for b, opts in options.items()}
    if serving is not None and any(
        o.how != "held" and o.node_id == serving for v in considered.values() for o in v
    ):
        holders.setdefault(serving, frozenset())
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
    home_index = [order.index(home)] if home is not None else []
    blocks = {
        block_id: [i for i, n in enumerate(order) if block_id in holders[n]]
        + [i for i in home_index if block_id not in holders[order[i]]]
        + [origin_index]
        for block_id in sizes
    }
    delivery: dict[str, dict[str, Any]] = {}
    index = {n: i for i, n in enumerate(order)}
    # Blocks with the same holders share their options (one list object per holder set).
    ranked_by_options: dict[int, list[int]] = {}
    templates: dict[tuple[int, int], tuple[dict[str, Any], float | None]] = {}
    for block_id, ranked_options in options.items():
        listed = blocks[block_id]
        if objective == "delay":
            ranked = ranked_by_options.get(id(ranked_options))
            if ranked is None:
                ranked = delay_routing.order_by_delay(ranked_options, index, origin_index)
                ranked_by_options[id(ranked_options)] = ranked
            listed = ranked[:-1] + [i for i in listed if i not in ranked] + [origin_index]
        elif ranked_options[0].how != "held" and ranked_options[0].node_id is not None:
            listed = [index[ranked_options[0].node_id or ""], *listed]
        blocks[block_id] = listed
        template = templates.get((id(ranked_options), listed[0]))
        if template is None:
            template = _delivery(ranked_options, order, listed[0], origin_index)
            templates[(id(ranked_options), listed[0])] = template
        doc, ms_per_byte = template
        if ms_per_byte is not None and costs is not None:
            doc = {**doc, "expected_ms": round(costs.latency_ms + sizes[block_id] * ms_per_byte, 3)}
        delivery[block_id] = doc
    route: dict[str, Any] = {
        "model_id": entry.model_id,
        "manifest": manifest.to_dict(),
        "sources": [s.model_dump(exclude_none=True) for s in sources],
        "blocks": blocks,
    }
    if delivery:
        route["delivery"] = delivery
    if base_model_id is not None:
        route["base_model_id"] = base_model_id
    return route


def _delivery(
    options: Sequence[delay_routing.BlockOption], order: Sequence[str], first: int, origin: int
) -> tuple[dict[str, Any], float | None]:
    """How a block's first candidate (``first``) serves it: ``delivery[block]`` of a route (a
    :class:`core.wire.RouteDelivery`, built as a plain dict) without ``expected_ms``, and the
    option's cost per byte (None: an on-demand home, which pulls the block through itself)."""
    want = None if first == origin else order[first]
    if want is None:  # the client reads the origin itself
        option = next((o for o in options if o.how == "origin"), None)
    else:
        option = next((o for o in options if o.node_id == want), None)
    if option is None:
        return {"source": first, "how": "held"}, None
    out: dict[str, Any] = {"source": first, "how": option.how}
    if option.migrate_from is not None:
        out["migrate_from"] = order.index(option.migrate_from)
    return out, option.ms_per_byte
