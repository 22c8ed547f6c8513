"""Request-time migration on real services: a block held only by a neighbour edge is migrated
edge-to-edge by the client's serving edge and served to the client; the origin is not asked.

Processes: redis-server, the origin (``trimcache origin serve``, with its request counter), the
controller (``CONTROLLER_MIGRATION=on``) and three edge nodes (``python -m edge_node``), each on
an OS-assigned port. The topology puts edge-1 at (0, 0) with the user area ``area-1`` 20 m from
it, edge-2 400 m and edge-3 800 m away. ``bert-spam`` is held by edge-2 only, ``bert-sst2`` by
edge-1: a client in area-1 is routed to edge-1, which migrates from edge-2 every block of
``bert-spam`` it lacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import fetch_model
from tests.edge_node.conftest import Cluster, edge_cluster, sha256_tree

pytestmark = pytest.mark.slow

POSITIONS = {"edge-1": (0.0, 0.0), "edge-2": (400.0, 0.0), "edge-3": (800.0, 0.0)}
HELD = {"edge-1": ["bert-sst2"], "edge-2": ["bert-spam"], "edge-3": []}
MODEL = "bert-spam"
#: Catalogued, held by no edge.
UNHELD = "bert-question"
TOPOLOGY = {
    "schema": "trimcache.topology/v1",
    "areas": {"area-1": {"x_m": 20.0, "y_m": 0.0}, "area-3": {"x_m": 820.0, "y_m": 0.0}},
    "positions": {n: list(p) for n, p in POSITIONS.items()},
}


@pytest.fixture(scope="module")
def cluster(
    zoo_dir: Path, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with edge_cluster(
        tmp_path_factory.mktemp("migration"),
        zoo_dir,
        redis_server,
        held=HELD,
        index=(MODEL, "bert-sst2", UNHELD),
        topology=TOPOLOGY,
        controller={"migration": "on"},
    ) as running:
        yield running


def test_route_sends_the_client_to_its_serving_edge_which_migrates(cluster: Cluster) -> None:
    route = httpx.get(
        f"{cluster.controller}/v1/routes/{MODEL}", params={"area_id": "area-1"}
    ).json()
    names = [s.get("node_id", s["kind"]) for s in route["sources"]]
    serving, holder = names.index("edge-1"), names.index("edge-2")
    sst2 = set(cluster.model_blocks("bert-sst2"))
    for block_id in cluster.model_blocks(MODEL):
        delivery = route["delivery"][block_id]
        assert route["blocks"][block_id][0] == serving == delivery["source"]
        assert route["blocks"][block_id][-1] == names.index("origin")
        if block_id in sst2:  # the MiniLM base both models share: edge-1 holds it
            assert delivery["how"] == "held"
        else:
            assert delivery["how"] == "migrate" and delivery["migrate_from"] == holder
    # A user next to the holder reads it there: nothing to migrate.
    near_holder = httpx.get(
        f"{cluster.controller}/v1/routes/{MODEL}", params={"x_m": 390.0, "y_m": 0.0}
    ).json()
    assert {d["how"] for d in near_holder["delivery"].values()} == {"held"}


def test_a_block_held_only_by_a_neighbour_is_migrated_and_served(
    cluster: Cluster, tmp_path: Path
) -> None:
    blocks = cluster.model_blocks(MODEL)
    lacking = {b: n for b, n in blocks.items() if b not in cluster.model_blocks("bert-sst2")}
    assert lacking  # bert-spam's own head and layers: held only by edge-2
    origin_before = cluster.origin_stats()
    before = {n: cluster.stats(n) for n in cluster.edges}

    fetched = fetch_model(
        MODEL,
        controller_url=cluster.controller,
        cache_dir=tmp_path / "device",
        area_id="area-1",
        load=False,
    )

    # Every byte came from the serving edge, and the files are the origin's, byte for byte.
    report = fetched.report
    fetched_from = {src for src, n in report["bytes_by_source"].items() if src != "local" and n}
    assert fetched_from == {cluster.edges["edge-1"]}, report["bytes_by_source"]
    assert report["bytes_fetched"] == sum(blocks.values())
    assert sha256_tree(fetched.path) == sha256_tree(cluster.zoo / "repos" / cluster.models[MODEL])
    # The origin was not asked for anything.
    origin_after = cluster.origin_stats()
    assert origin_after["requests"] == origin_before["requests"]
    assert origin_after["bytes_served"] == origin_before["bytes_served"]
    # edge-2 served the migration to edge-1, and only that; edge-1 counted it in.
    after = {n: cluster.stats(n) for n in cluster.edges}
    moved = sum(lacking.values())

    def delta(node: str, key: str) -> int:
        return int(after[node][key]) - int(before[node][key])

    assert delta("edge-2", "migrated_out_blocks") == len(lacking)
    assert delta("edge-2", "migrated_out_bytes") == moved
    assert delta("edge-1", "migrated_in_blocks") == len(lacking)
    assert delta("edge-1", "migrated_in_bytes") == moved
    pulled = after["edge-1"]["bytes_pulled_by_source"]
    assert (
        pulled.get(cluster.edges["edge-2"], 0)
        - before["edge-1"]["bytes_pulled_by_source"].get(cluster.edges["edge-2"], 0)
        == moved
    )
    assert delta("edge-3", "migrated_out_bytes") == 0
    assert delta("edge-2", "bytes_served") == moved  # the client never asked edge-2 itself
    # The same counters on /metrics.
    metrics = httpx.get(f"{cluster.edges['edge-2']}/metrics").text
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples["edge_migrated_out_bytes_total"] == after["edge-2"]["migrated_out_bytes"]
    assert samples["edge_migrated_out_blocks_total"] == after["edge-2"]["migrated_out_blocks"]


def test_a_migration_never_falls_back_to_the_origin(cluster: Cluster) -> None:
    own = sorted(set(cluster.model_blocks(UNHELD)) - set(cluster.model_blocks("bert-sst2")))
    origin_before = cluster.origin_stats()
    body = {"block_ids": own[:1], "model_id": UNHELD, "migrate": True}
    r = httpx.post(f"{cluster.edges['edge-1']}/v1/blocks:batch", json=body, timeout=60)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    assert cluster.origin_stats()["requests"] == origin_before["requests"]
    # A block of another model is bad input; without "migrate" a lacking block is a 404 as
    # before (an older client then reads the holder itself).
    foreign = sorted(set(cluster.model_blocks("bert-sst2")) - set(cluster.model_blocks(MODEL)))
    body = {"block_ids": foreign[:1], "model_id": MODEL, "migrate": True}
    r = httpx.post(f"{cluster.edges['edge-1']}/v1/blocks:batch", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    lacking = sorted(set(cluster.model_blocks(MODEL)) - set(cluster.model_blocks("bert-sst2")))
    body = {"block_ids": lacking[:1], "model_id": MODEL}
    r = httpx.post(f"{cluster.edges['edge-1']}/v1/blocks:batch", json=body, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "block_not_found"
