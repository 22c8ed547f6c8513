"""``GET /v1/dashboard`` and the page's routes: in-process controller, real Redis, real origin.

Two registered nodes (addresses where nothing listens, so their stats are honestly
unavailable) hold the mini zoo's models; demand reports from one area arrive with bytes from
the area's own node, a neighbour, the origin and the device cache only. The feed must group
the shared blocks, classify each fetch by its source, give the measured hit ratio after each
report, and log the plan the watcher saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.settings import Settings
from tests.controller.conftest import MINI_MODELS
from tests.helpers import free_port, wait_until

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHARED_BYTES = 4 * 128 * 64 * 4  # the four base layers every mini model shares


@pytest.fixture
def client(redis_url: str, mini_origin: str) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, origin_url=mini_origin, auth_token=TOKEN, auto_plan=False
    )
    with TestClient(create_app(settings), headers=AUTH) as c:
        yield c


def _setup(client: TestClient) -> dict[str, str]:
    for model_id in MINI_MODELS:
        response = client.post(
            "/v1/models", json={"model_id": model_id, "repo_id": f"mini/{model_id}"}
        )
        assert response.status_code == 201, response.text
    urls = {n: f"http://127.0.0.1:{free_port()}" for n in ("edge-1", "edge-2")}
    held = {"edge-1": ["tiny-a", "tiny-b"], "edge-2": ["tiny-c"]}
    for node_id, x in (("edge-1", 0.0), ("edge-2", 400.0)):
        body = {"url": urls[node_id], "capacity_bytes": 10**6, "position": [x, 0.0]}
        response = client.put(f"/v1/nodes/{node_id}", json={**body, "models": held[node_id]})
        assert response.status_code == 200, response.text
    topology = {
        "areas": {"near-1": {"x_m": 10.0, "y_m": 0.0}, "near-2": {"x_m": 390.0, "y_m": 0.0}}
    }
    assert client.put("/v1/topology", json=topology).status_code == 200
    return urls


def _report(client: TestClient, model_id: str, bytes_by_source: dict[str, int], **extra: Any):
    body = {"model_id": model_id, "area_id": "near-1", "bytes_by_source": bytes_by_source}
    response = client.post("/v1/demand", json={**body, **extra})
    assert response.status_code == 202, response.text


def test_feed_groups_sharing_and_classifies_fetches(client: TestClient, mini_origin: str) -> None:
    urls = _setup(client)
    _report(client, "tiny-a", {urls["edge-1"]: 900, "local": 0}, seconds=0.5)
    _report(client, "tiny-c", {urls["edge-2"] + "/": 700}, seconds=0.8)
    _report(client, "tiny-b", {urls["edge-1"]: 100, mini_origin: 800}, outcome="miss", seconds=2.0)
    _report(client, "tiny-a", {"local": 900}, seconds=0.1)
    _report(client, "tiny-b", {}, outcome="error", seconds=0.2)

    doc = client.get("/v1/dashboard", headers={"Authorization": ""}).json()  # no token needed
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    one = nodes["edge-1"]
    assert one["models"] == ["tiny-a", "tiny-b"]
    shared = [s for s in one["segments"] if s["shared"]]
    assert [(s["models"], s["bytes"]) for s in shared] == [(["tiny-a", "tiny-b"], SHARED_BYTES)]
    assert one["shared_bytes"] == SHARED_BYTES
    own = {tuple(s["models"]): s["bytes"] for s in one["segments"] if not s["shared"]}
    assert set(own) == {("tiny-a",), ("tiny-b",)}
    assert one["physical_bytes"] == SHARED_BYTES + sum(own.values())
    assert one["logical_bytes"] > one["physical_bytes"] and 0 < one["savings"] < 1
    assert all(not s["shared"] for s in nodes["edge-2"]["segments"])
    assert "unavailable" in one["stats"]  # nothing listens at the node's address
    assert doc["origin"]["stats"]["bytes_served"] >= 0

    # Newest first; the neighbour's bytes make a peer fetch, any origin byte an origin one.
    sources = [(f["model_id"], f["source"]) for f in doc["fetches"]]
    assert sources == [
        ("tiny-b", "error"),
        ("tiny-a", "local"),
        ("tiny-b", "origin"),
        ("tiny-c", "peer"),
        ("tiny-a", "edge"),
    ]
    assert doc["fetches"][3]["bytes_by_node"] == {"edge-2": 700}
    assert [p["hit_ratio"] for p in doc["demand"]["series"]] == [1.0, 1.0, 2 / 3, 3 / 4, 3 / 5]
    status = client.get("/v1/status").json()["demand"]
    assert {k: v for k, v in doc["demand"].items() if k != "series"} == status
    assert {a["area_id"] for a in doc["topology"]["areas"]} == {"near-1", "near-2"}


def test_watcher_logs_plans(client: TestClient) -> None:
    _setup(client)
    response = client.post("/v1/placement:plan")
    assert response.status_code == 200, response.text
    version = response.json()["version"]
    plans = wait_until(lambda: client.get("/v1/dashboard").json()["plans"], timeout_s=30)
    assert plans[0]["version"] == version
    assert set(plans[0]["nodes"]) == {"edge-1", "edge-2"}
    assert plans[0]["moved_bytes"] == {"from_peers": 0, "from_origin": 0, "evicted": 0}


def test_page_and_assets(client: TestClient) -> None:
    page = client.get("/dashboard", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for src in ("/dashboard/assets/dashboard.js", "/dashboard/assets/dashboard.css"):
        assert src in page.text
        assert client.get(src).status_code == 200
    for bad in ("routes.py", "index.html", "nope.js"):  # only the listed assets
        response = client.get(f"/dashboard/assets/{bad}")
        assert response.status_code == 404, bad
        assert response.headers["X-Error-Code"] == "asset_not_found"


def test_logs_keep_only_the_newest(redis_url: str) -> None:
    from controller.state import RedisState

    state = RedisState(redis_url)
    try:
        for i in range(5):
            state.record_fetch({"at": i, "model_id": f"m{i}"}, keep=3)
            state.put_plan_summary(i + 1, {"version": i + 1}, keep=2)
        assert [f["at"] for f in state.recent_fetches()] == [4, 3, 2]
        assert [p["version"] for p in state.plan_summaries()] == [5, 4]
        state.put_plan_summary(5, {"version": 5, "push": "applied"}, keep=2)  # overwritten
        assert state.plan_summaries()[0] == {"version": 5, "push": "applied"}
    finally:
        state.close()
