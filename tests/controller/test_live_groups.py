"""Live broadcast groups in routing (controller/live_groups.py), on a real controller app with
a real Redis: edges report the blocks they are broadcasting in their heartbeats; with the
delay objective, a block of a live group is routed to the edge broadcasting it when joining the
group beats the block's own expected delay, and only that block; the routing stamp does not
move (route bodies stay cached); a group that ends too late, or has ended, changes nothing.

Two nodes hold ``tiny-a`` (their heartbeats report it); the client's area is 20 m from edge-1
and 200 m from edge-2. A 1 kHz channel makes a 32 KiB block's airtime several seconds, so a
group ending in 3 s is the faster way, however late a loaded machine answers within those 3 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from client._route import parse_route
from controller import delay_routing
from controller.app import create_app
from controller.live_groups import Group, hint_route, join_ms
from controller.state import ROUTING_STAMP_KEY
from controller.topology import Topology
from tests.controller.conftest import AUTH, MINI_MODELS, controller_settings

TOPOLOGY = {
    "schema": "trimcache.topology/v1",
    "areas": {"area-1": {"x_m": 20.0, "y_m": 0.0}},
    "positions": {"edge-1": [0.0, 0.0], "edge-2": [220.0, 0.0]},
    "channel": {"bandwidth_hz": 1e3, "latency_ms": 2.0},
}
MODEL = MINI_MODELS[0]


@pytest.fixture
def controller(redis_url: str, mini_origin: str) -> Iterator[TestClient]:
    settings = controller_settings(redis_url, mini_origin, objective="delay")
    client = TestClient(create_app(settings), headers=AUTH)
    with client:
        r = client.post("/v1/models", json={"model_id": MODEL, "repo_id": f"mini/{MODEL}"})
        assert r.status_code == 201, r.text
        assert client.put("/v1/topology", json=TOPOLOGY).status_code == 200
        yield client


def _beat(client: TestClient, node_id: str, broadcast: list[dict[str, Any]] | None) -> None:
    body: dict[str, Any] = {
        "url": f"http://127.0.0.1:{9001 if node_id == 'edge-1' else 9002}",
        "capacity_bytes": 10**9,
        "position": TOPOLOGY["positions"][node_id],  # type: ignore[index]
        "models": [MODEL],
        "broadcast": broadcast,
    }
    r = client.put(f"/v1/nodes/{node_id}", json=body)
    assert r.status_code == 200, r.text


def _route(client: TestClient) -> dict[str, Any]:
    r = client.get(f"/v1/routes/{MODEL}", params={"area_id": "area-1"})
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_a_block_in_a_live_group_is_routed_to_the_edge_broadcasting_it(
    controller: TestClient, redis_url: str
) -> None:
    import redis

    _beat(controller, "edge-1", None)
    _beat(controller, "edge-2", None)
    before = _route(controller)
    names = [s.get("node_id", s["kind"]) for s in before["sources"]]
    assert names == ["edge-1", "edge-2", "origin"], names
    sizes = {row[0]: row[2] for f in before["manifest"]["files"] for row in f["blocks"]}
    block = max(sizes, key=lambda b: (sizes[b], b))
    assert all(c[0] == 0 for c in before["blocks"].values())
    unicast_ms = before["delivery"][block]["expected_ms"]
    assert unicast_ms > 4000, before["delivery"][block]  # the 1 kHz channel: seconds a block

    stamp = redis.Redis.from_url(redis_url).get(ROUTING_STAMP_KEY)
    group = {"block_id": block, "size_bytes": sizes[block], "sent_bytes": 0}
    _beat(controller, "edge-2", [{**group, "starts_in_s": 2.0, "ends_in_s": 3.0}])
    assert redis.Redis.from_url(redis_url).get(ROUTING_STAMP_KEY) == stamp  # no re-route
    time.sleep(0.3)  # the controller's view of live groups is at most 0.25 s old
    hinted = _route(controller)
    d = hinted["delivery"][block]
    assert hinted["blocks"][block][0] == d["source"] == names.index("edge-2"), d
    assert d["broadcast"] is True and d["how"] == "held"
    assert d["expected_ms"] < unicast_ms
    assert sorted(hinted["blocks"][block]) == sorted(before["blocks"][block])
    for other, candidates in hinted["blocks"].items():  # only the live block moved
        if other != block:
            assert candidates == before["blocks"][other]
            assert hinted["delivery"][other] == before["delivery"][other]
    route = parse_route(hinted)  # the SDK reads it: its first candidate is edge-2
    assert route.sources[route.blocks[block][0]].node_id == "edge-2"

    # A group ending later than the block alone takes: not worth joining.
    _beat(controller, "edge-2", [{**group, "starts_in_s": 0.0, "ends_in_s": 30.0}])
    time.sleep(0.3)
    assert _route(controller) == before
    # No group any more: the cached route as it was.
    _beat(controller, "edge-2", [])
    time.sleep(0.3)
    assert _route(controller) == before


def test_joining_costs_the_rest_of_the_group_and_the_missed_head() -> None:
    g = Group("edge-2", 1000, 0, starts_at=10.0, ends_at=12.0)
    assert join_ms(g, 0.5, 2.0, now=9.0) == pytest.approx(2.0 + 3000.0)  # all of it, queued
    # Half on the air: the other half's time, then the missed 500 bytes as unicast.
    assert join_ms(g, 0.5, 2.0, now=11.0) == pytest.approx(2.0 + 1000.0 + 250.0)
    topology = Topology.from_json(TOPOLOGY)
    air = delay_routing.airtime_ms(topology, (20.0, 0.0), (220.0, 0.0), 1)
    route: dict[str, Any] = {
        "sources": [
            {"url": "u1", "kind": "edge", "node_id": "edge-1"},
            {"url": "u2", "kind": "edge", "node_id": "edge-2"},
            {"url": "o", "kind": "origin"},
        ],
        "blocks": {"b1": [0, 1, 2], "b2": [0, 2]},
        "delivery": {"b1": {"source": 0, "how": "held", "expected_ms": 5000.0}},
        "manifest": {"files": [{"blocks": [["b1", 0, 1000], ["b2", 1000, 1000]]}]},
    }
    live = {
        "b1": [Group("edge-2", 1000, 0, 100.0, 101.0)],
        "b2": [Group("edge-2", 1000, 0, 100.0, 101.0)],  # edge-2 is not a source of b2
    }
    assert hint_route(route, live, air_ms_per_byte={"edge-2": air}, latency_ms=2.0, now=99.0)
    assert route["blocks"] == {"b1": [1, 0, 2], "b2": [0, 2]}
    assert route["delivery"]["b1"] == {
        "source": 1, "how": "held", "broadcast": True, "expected_ms": 2002.0,
    }  # fmt: skip
