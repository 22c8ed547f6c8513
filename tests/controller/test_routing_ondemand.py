"""Routes with on-demand nodes (controller.routing): the client's nearest on-demand node serves
every block it lacks, and on-demand nodes are named only for models they hold whole."""

from __future__ import annotations

from typing import Any

from controller.routing import build_route, home_node
from controller.state import CatalogueEntry, NodeRecord
from controller.topology import default_topology
from core.digest import BlockId
from core.manifest import BlockRef, FileEntry, ModelManifest

A, B, S = "a" * 64, "b" * 64, "c" * 64  # block ids; S is shared by both models


def _entry(model_id: str, blocks: list[str]) -> CatalogueEntry:
    # One file of 10-byte blocks (a headerless "safetensors" file: blocks tile it exactly).
    refs = tuple(BlockRef(BlockId(b), i * 10, 10) for i, b in enumerate(blocks))
    file = FileEntry("model.bin", 10 * len(blocks), "0" * 64, "safetensors", refs)
    manifest = ModelManifest(model_id, f"org/{model_id}", "main", (file,))
    return CatalogueEntry(model_id, f"org/{model_id}", "main", "main", 20, 2, manifest)


NEAR = NodeRecord("near", "http://near", 100, position=(0.0, 0.0), cache_policy="lru")
FAR = NodeRecord("far", "http://far", 100, position=(400.0, 0.0), cache_policy="lru",
                 models=("m2",))  # fmt: skip
TOPOLOGY = default_topology({"near": (0.0, 0.0), "far": (400.0, 0.0)})
BLOCKS = {"m1": frozenset({A, S}), "m2": frozenset({B, S})}


def _route(model_id: str, blocks: list[str], point: tuple[float, float] | None) -> dict[str, Any]:
    return build_route(
        _entry(model_id, blocks), nodes=[NEAR, FAR], blocks_by_model=BLOCKS,
        topology=TOPOLOGY, point=point, origin_url="http://origin",
    )  # fmt: skip


def test_the_home_node_is_the_nearest_on_demand_node() -> None:
    assert home_node([NEAR, FAR], TOPOLOGY, (20.0, 0.0), 20) == "near"
    assert home_node([NEAR, FAR], TOPOLOGY, (380.0, 0.0), 20) == "far"
    assert home_node([NEAR, FAR], TOPOLOGY, None, 20) is None
    planned = NodeRecord("p", "http://p", 100)
    assert home_node([planned], TOPOLOGY, (0.0, 0.0), 20) is None


def test_a_miss_goes_to_the_home_node_and_holders_of_whole_models_come_first() -> None:
    # m1 held nowhere: the home node for every block, then the origin.
    route = _route("m1", [A, S], (20.0, 0.0))
    names = [s.get("node_id", s["kind"]) for s in route["sources"]]
    assert names == ["near", "origin"]
    assert route["blocks"] == {A: [0, 1], S: [0, 1]}
    # "far" holds m1's shared block S (through m2) but not m1: not a source of it.
    # m2 is held whole by "far": named first for every block, then the home node.
    route = _route("m2", [B, S], (20.0, 0.0))
    names = [s.get("node_id", s["kind"]) for s in route["sources"]]
    far, near = names.index("far"), names.index("near")
    assert route["blocks"][B] == [far, near, len(names) - 1]
    # No position: no home node, only the whole-model holder.
    route = _route("m1", [A, S], None)
    assert [s["kind"] for s in route["sources"]] == ["origin"]
