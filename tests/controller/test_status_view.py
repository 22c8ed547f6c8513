"""``GET /v1/status`` from cached encodings (controller.api.status_view) against a real Redis
and the real app: never a stale node set or value, and the same document as a full parse."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.api.routes.nodes import node_view
from controller.api.routes.placement import placement_view
from controller.app import create_app
from controller.settings import Settings
from controller.state import NodeRecord, RedisState
from tests.controller.conftest import AUTH, controller_settings
from tests.helpers import wait_until


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return controller_settings(redis_url, "http://127.0.0.1:9", heartbeat_expiry_s=30)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=AUTH) as c:
        yield c


@pytest.fixture
def state(redis_url: str) -> Iterator[RedisState]:
    s = RedisState(redis_url)
    yield s
    s.close()


def beat(client: TestClient, node_id: str, **body: Any) -> None:
    doc = {"url": f"http://{node_id}.test:8001", "capacity_bytes": 10**9, "position": [1, 2]}
    client.put(f"/v1/nodes/{node_id}", json={**doc, **body}).raise_for_status()


def status(client: TestClient) -> dict[str, Any]:
    response = client.get("/v1/status")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    doc: dict[str, Any] = response.json()
    return doc


def without_age(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in view.items() if k != "age_s"} for view in views]


def test_status_nodes_follow_registrations_heartbeats_writes_and_expiry(
    client: TestClient, state: RedisState
) -> None:
    beat(client, "edge-1")
    assert [n["node_id"] for n in status(client)["nodes"]] == ["edge-1"]
    beat(client, "edge-2", physical_bytes=5)
    first = status(client)["nodes"]  # both cached now
    assert [n["node_id"] for n in first] == ["edge-1", "edge-2"]
    # A heartbeat rewrites the record: the next status shows its values, not the cached ones.
    time.sleep(0.01)
    beat(client, "edge-2", physical_bytes=7, models=[])
    state.update_node_models("edge-1", dropping=["gone"])
    again = status(client)["nodes"]
    assert again[1]["physical_bytes"] == 7 and again[1]["last_seen"] > first[1]["last_seen"]
    assert again[0]["dropping"] == ["gone"]
    # Every view is node_view of the stored record; age_s is computed per request.
    now = time.time()
    expected = [node_view(n, now) for n in state.live_nodes()]
    assert without_age(again) == without_age(expected)
    assert all(0 <= n["age_s"] <= e["age_s"] + 0.001 for n, e in zip(again, expected, strict=True))
    # A node whose key expires is gone from the very next status once Redis dropped it.
    short = NodeRecord(node_id="edge-3", url="http://edge-3.test:1", capacity_bytes=1)
    state.put_node(short, ttl_s=0.3)
    assert [n["node_id"] for n in status(client)["nodes"]] == ["edge-1", "edge-2", "edge-3"]
    wait_until(lambda: state.get_node("edge-3") is None, timeout_s=5)
    assert [n["node_id"] for n in status(client)["nodes"]] == ["edge-1", "edge-2"]
    # Deleted: gone at once; registered again: back.
    client.delete("/v1/nodes/edge-1").raise_for_status()
    assert [n["node_id"] for n in status(client)["nodes"]] == ["edge-2"]
    beat(client, "edge-1")
    assert [n["node_id"] for n in status(client)["nodes"]] == ["edge-1", "edge-2"]


def test_status_placement_is_the_full_parse_and_follows_every_push(
    client: TestClient, state: RedisState, settings: Settings
) -> None:
    def expected() -> dict[str, Any]:
        return placement_view(state.get_placement(), settings.solver)

    assert status(client)["placement"] == expected()  # no placement yet
    record = {
        "version": state.next_placement_version(),
        "solver": "trimcaching-gen",
        "status": "ok",
        "hit_ratio": 0.25,
        "servers": {"edge-1": {"models": ["m"], "blocks": ["pb-1"], "used_bytes": 3}},
        "push": {"edge-1": {"status": "pending", "version": 1, "at": 1.5}},
        "dispatch": {"state": "running", "started_at": 1.0},
    }
    state.save_placement(record)
    doc = status(client)
    assert doc["placement"] == expected() and doc["expected_hit_ratio"] == 0.25
    # Push outcomes and dispatch move without the record changing: never a cached copy.
    state.update_push_status(1, "edge-1", {"status": "applied", "version": 1, "at": 2.5})
    state.update_push_status(1, "edge-2", {"status": "failed", "version": 1, "at": 2.0})
    state.update_dispatch(1, {"state": "done", "started_at": 1.0, "finished_at": 3.0})
    doc = status(client)
    assert doc["placement"] == expected()
    assert doc["placement"]["push"]["edge-1"]["status"] == "applied"
    assert doc["placement"]["dispatch"]["state"] == "done"
    # A new record (same size, other values) is a cache miss.
    state.save_placement({**record, "version": state.next_placement_version(), "hit_ratio": 0.5})
    doc = status(client)
    assert doc["placement"] == expected() and doc["placement"]["version"] == 2
    assert doc["expected_hit_ratio"] == 0.5
    # A record of the older layout (push and dispatch inside it, no status hash).
    state.client.delete("ctl:placement:status")
    state.client.set("ctl:placement", json.dumps({**record, "version": 3, "schema_version": 1}))
    doc = status(client)
    assert doc["placement"] == expected() and doc["placement"]["push"] == record["push"]
    assert doc["placement"]["dispatch"] == record["dispatch"]
