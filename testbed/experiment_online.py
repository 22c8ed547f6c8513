"""What the placement simulator predicts for a testbed whose edges cache on demand (lru/lfu).

An on-demand testbed (``testbed up --cache-policy lru|lfu``) has no placement to evaluate: its
edges start empty and fill from the requests they see. The prediction that compares with a
measured run is the simulator's replay of *the same request sequence* through the same policy
from empty caches (:func:`controller.placement.online.replay`, the code behind the ``lru`` and
``lfu`` solvers, whose policy logic is the edges' own, :mod:`core.cachepolicy`): one verdict per
request, so the report's predicted and sampled-predicted hit ratios are both its mean.

The problem is the controller's view of the testbed: every catalogued model as its blocks (from
the manifests of ``GET /v1/routes/{model_id}``; an adapter also needs its base model's blocks,
:func:`controller.adapters.with_bases`), every edge node with its registered capacity, users =
the topology's areas, reachability from :func:`controller.topology.reachable_sets` with each
area's servers listed nearest first (the route's *home* node, where a miss is cached, is the
nearest on-demand node: :func:`controller.routing.home_node`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from testbed.experiment import Request, Testbed


def online_problem(testbed: Testbed, view: Mapping[str, Any]) -> Any:
    """The :class:`~controller.placement.PlacementProblem` of the testbed as it stands."""
    from controller.adapters import base_models, with_base_sizes, with_bases
    from controller.placement import PlacementProblem
    from controller.topology import Topology, delivery_ms, reachable_sets
    from core.manifest import ModelManifest

    doc = {k: v for k, v in view["topology"].items() if k not in ("version", "source")}
    topology = Topology.from_json(doc)
    with httpx.Client(base_url=testbed.controller_url, timeout=30) as http:
        nodes = http.get("/v1/nodes").raise_for_status().json()["nodes"]
        manifests = [
            ModelManifest.from_dict(
                http.get(f"/v1/routes/{quote(str(m['model_id']), safe='')}")
                .raise_for_status()
                .json()["manifest"]
            )
            for m in view["models"]
        ]
    blocks = {str(b): n for m in manifests for b, n in m.block_sizes().items()}
    bases = base_models(view["models"])
    models = with_bases({m.model_id: tuple(m.block_sizes()) for m in manifests}, bases)
    positions = {
        str(n["node_id"]): tuple(topology.positions.get(n["node_id"], n["position"])) for n in nodes
    }
    servers = {
        str(n["node_id"]): int(n["capacity_bytes"])
        if n.get("capacity_bytes") is not None
        else sum(blocks.values())
        for n in nodes
    }
    sizes = with_base_sizes({m.model_id: m.total_bytes for m in manifests}, bases)
    typical = sum(sizes.values()) // max(1, len(sizes))
    reachable: dict[str, dict[str, frozenset[str]]] = {}
    for area_id, by_node in reachable_sets(topology, positions, sizes).items():
        area = topology.areas[area_id]
        times = delivery_ms(topology, (area.x_m, area.y_m), positions, typical)
        order = sorted(by_node, key=lambda n: (times[n], n))
        reachable[area_id] = {n: frozenset(by_node[n]) for n in order}
    requests = {a: dict.fromkeys(sizes, 1.0 / len(sizes)) for a in topology.areas}
    return PlacementProblem(
        blocks=blocks, models=models, servers=servers, requests=requests, reachable=reachable
    )


def predicted_online(
    testbed: Testbed, view: Mapping[str, Any], workload: Sequence[Request], policy: str
) -> dict[int, bool]:
    """Request index -> whether the simulator's ``policy`` replay of ``workload`` (in order,
    from empty caches) counts it as a hit."""
    from controller.placement.online import replay

    problem = online_problem(testbed, view)
    trace = [(r.area_id, r.model_id) for r in workload]
    outcome = replay(problem, trace, policy=policy)
    return {r.index: hit for r, hit in zip(workload, outcome.outcomes, strict=True)}
