"""The delay model's wired paths on real services: origin -> serving edge -> radio, and
edge -> edge migration, each over its emulated link (edge_node.wired).

Processes: redis-server, the origin (``trimcache origin serve``, with its counters), the
controller (``CONTROLLER_MIGRATION=on``) and two edge nodes (``python -m edge_node``) that
emulate a world file (``EDGE_WORLD_FILE``): edge-1 at (0, 0) with ``area-1`` 20 m away, edge-2
at 400 m; the world's backhaul and edge links are slow enough for their line time to show.
edge-1 holds ``bert-sst2``, edge-2 ``bert-spam``; ``bert-question`` is held by nobody (only its
MiniLM base layers, shared with ``bert-sst2``, are on edge-1).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import fetch_model
from core.world import Link, World
from testbed.topology import EdgeSite, SiteLayout, UserArea
from testbed.world import build_world, write_world
from tests.edge_node.conftest import Cluster, edge_cluster, sha256_tree

pytestmark = pytest.mark.slow

HELD = {"edge-1": ["bert-sst2"], "edge-2": ["bert-spam"]}
UNHELD = "bert-question"
MIGRATED = "bert-spam"
BACKHAUL = Link(rate_bytes_per_s=20e6, latency_ms=30.0)
EDGE_LINK = Link(rate_bytes_per_s=50e6, latency_ms=100.0)
LAYOUT = SiteLayout(
    (EdgeSite("edge-1", 0.0, 0.0), EdgeSite("edge-2", 400.0, 0.0)),
    (UserArea("area-1", 20.0, 0.0, near="edge-1"), UserArea("area-2", 420.0, 0.0, near="edge-2")),
)
TOPOLOGY = {
    "schema": "trimcache.topology/v1",
    "areas": {a.area_id: {"x_m": a.x_m, "y_m": a.y_m} for a in LAYOUT.areas},
    "positions": {e.node_id: [e.x_m, e.y_m] for e in LAYOUT.edges},
    # The controller costs the radio and the links the edges emulate (bits/s), as the
    # testbed writes them from a world (testbed/launcher.py).
    "channel": {
        "bandwidth_hz": 20e6,
        "backhaul_bps": 50e6 * 8,
        "origin_bps": 20e6 * 8,
    },
}


@pytest.fixture(scope="module")
def world_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_world(
        tmp_path_factory.mktemp("wired-world") / "world.json",
        build_world(LAYOUT, radio_latency_ms=0.0, backhaul=BACKHAUL, edge_links=EDGE_LINK),
    )


@pytest.fixture(scope="module")
def cluster(
    zoo_dir: Path, redis_server: str, tmp_path_factory: pytest.TempPathFactory, world_file: Path
) -> Iterator[Cluster]:
    with edge_cluster(
        tmp_path_factory.mktemp("wired"),
        zoo_dir,
        redis_server,
        held=HELD,
        index=(MIGRATED, "bert-sst2", UNHELD),
        topology=TOPOLOGY,
        controller={"migration": "on"},
        edge={node_id: {"world_file": str(world_file)} for node_id in HELD},
    ) as running:
        yield running


def _fetch(cluster: Cluster, model_id: str, device: Path) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    fetched = fetch_model(
        model_id, controller_url=cluster.controller, cache_dir=device, area_id="area-1", load=False
    )
    elapsed = time.monotonic() - started
    assert sha256_tree(fetched.path) == sha256_tree(
        cluster.zoo / "repos" / cluster.models[model_id]
    )
    return fetched.report, elapsed


def test_a_block_nobody_holds_comes_from_the_origin_through_the_serving_edge_radio(
    cluster: Cluster, world_file: Path, tmp_path: Path
) -> None:
    blocks = cluster.model_blocks(UNHELD)
    lacking = {b: n for b, n in blocks.items() if b not in cluster.model_blocks("bert-sst2")}
    assert lacking and len(lacking) < len(blocks)  # its base layers are on edge-1
    route = httpx.get(
        f"{cluster.controller}/v1/routes/{UNHELD}", params={"area_id": "area-1"}
    ).json()
    serving = [s.get("node_id") for s in route["sources"]].index("edge-1")
    for block_id in lacking:  # the model's cloud path: via the serving edge
        assert route["delivery"][block_id] == {
            "source": serving,
            "how": "origin",
            "expected_ms": route["delivery"][block_id]["expected_ms"],
        }
    origin_before = cluster.origin_stats()
    before = cluster.stats("edge-1")

    report, elapsed = _fetch(cluster, UNHELD, tmp_path / "device")

    # Every byte reached the client from edge-1, none from the origin directly.
    fetched_from = {src for src, n in report["bytes_by_source"].items() if src != "local" and n}
    assert fetched_from == {cluster.edges["edge-1"]}, report["bytes_by_source"]
    # The origin served exactly the blocks edge-1 lacked, to edge-1 (one pull each).
    after = cluster.stats("edge-1")
    origin_after = cluster.origin_stats()
    moved = sum(lacking.values())
    assert origin_after["bytes_served"] - origin_before["bytes_served"] == moved
    pulled = after["bytes_pulled_by_source"].get(cluster.origin, 0)
    assert pulled - before["bytes_pulled_by_source"].get(cluster.origin, 0) == moved
    assert after["migrated_in_bytes"] == before["migrated_in_bytes"]  # not a migration
    # ...and every byte of the model, the pulled ones too, was airtime on edge-1's radio.
    radio_before, radio_after = before["radio"], after["radio"]
    on_air = radio_after["bytes_on_air"] - radio_before["bytes_on_air"]
    assert on_air >= sum(blocks.values())
    rate = World.load(world_file).rate("area-1", ["edge-1"], serving="edge-1")
    airtime = radio_after["airtime_s"] - radio_before["airtime_s"]
    assert airtime >= sum(blocks.values()) / rate * (1 - 1e-6)
    # The backhaul's line time (lower bound): the largest pulled block, plus its latency.
    line = BACKHAUL.rate_bytes_per_s
    assert line is not None
    assert elapsed >= BACKHAUL.latency_ms / 1000 + max(lacking.values()) / line


def test_a_migration_crosses_the_emulated_edge_link(cluster: Cluster, tmp_path: Path) -> None:
    blocks = cluster.model_blocks(MIGRATED)
    lacking = {b: n for b, n in blocks.items() if b not in cluster.model_blocks("bert-sst2")}
    origin_before = cluster.origin_stats()
    before = {n: cluster.stats(n) for n in cluster.edges}

    report, elapsed = _fetch(cluster, MIGRATED, tmp_path / "device")

    fetched_from = {src for src, n in report["bytes_by_source"].items() if src != "local" and n}
    assert fetched_from == {cluster.edges["edge-1"]}, report["bytes_by_source"]
    after = {n: cluster.stats(n) for n in cluster.edges}
    moved = sum(lacking.values())
    assert after["edge-1"]["migrated_in_bytes"] - before["edge-1"]["migrated_in_bytes"] == moved
    assert after["edge-2"]["migrated_out_bytes"] - before["edge-2"]["migrated_out_bytes"] == moved
    assert cluster.origin_stats()["bytes_served"] == origin_before["bytes_served"]
    # The peer's answer is not on edge-2's downlink (it is the edge link) ...
    assert after["edge-2"]["radio"]["bytes_on_air"] == before["edge-2"]["radio"]["bytes_on_air"]
    # ... and it took at least the edge link's line time of the largest migrated block.
    rate = EDGE_LINK.rate_bytes_per_s
    assert rate is not None
    assert elapsed >= EDGE_LINK.latency_ms / 1000 + max(lacking.values()) / rate
