"""Single-route tests of the controller API: in-process TestClient, real Redis, real origin."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.errors import InvalidRequestError
from controller.settings import Settings
from tests.controller.conftest import AUTH, MINI_MODELS, TOKEN, controller_settings
from tests.helpers import free_port

NO_AUTH = {"Authorization": ""}  # overrides the clients' default token


@pytest.fixture
def settings(redis_url: str, mini_origin: str) -> Settings:
    return controller_settings(redis_url, mini_origin)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=AUTH) as c:
        yield c


def add(client: TestClient, model_id: str, repo: str | None = None, **extra: str):
    return client.post(
        "/v1/models",
        json={"model_id": model_id, "repo_id": repo or f"mini/{model_id}", **extra},
    )


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["X-Error-Code"] == code
    assert response.json()["error"]["code"] == code


def test_catalogue_add_get_list_delete(client: TestClient) -> None:
    r = add(client, "tiny-a")
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["model_id"] == "tiny-a" and doc["repo_id"] == "mini/tiny-a"
    assert len(doc["revision"]) == 40  # the origin's resolved commit, not "main"
    assert doc["blocks"] == 6 and doc["total_bytes"] > 4 * 128 * 64 * 4
    # Indexed once: the same request again is a no-op answered 200.
    again = add(client, "tiny-a")
    assert again.status_code == 200 and again.json() == doc
    one = client.get("/v1/models/tiny-a").json()
    assert one["manifest"]["model_id"] == "tiny-a"
    assert one["manifest"]["revision"] == doc["revision"]
    assert {f["path"] for f in one["manifest"]["files"]} == {"config.json", "model.safetensors"}
    assert client.get("/v1/models").json() == {"models": [doc]}
    assert client.delete("/v1/models/tiny-a").json() == {"model_id": "tiny-a", "deleted": True}
    assert_error(client.get("/v1/models/tiny-a"), 404, "model_not_found")
    assert_error(client.delete("/v1/models/tiny-a"), 404, "model_not_found")
    assert client.get("/v1/models").json() == {"models": []}


def test_catalogue_bad_repos_leave_it_unchanged(client: TestClient, redis_url: str) -> None:
    assert add(client, "tiny-a").status_code == 201
    assert_error(add(client, "nope", "mini/does-not-exist"), 404, "repo_not_found")
    assert_error(add(client, "tiny-b", revision="0" * 40), 404, "revision_not_found")
    assert client.post("/v1/models", json={"model_id": "../x", "repo_id": "a/b"}).status_code == 422
    assert client.post("/v1/models", json={"repo_id": "a/b"}).status_code == 422
    assert [m["model_id"] for m in client.get("/v1/models").json()["models"]] == ["tiny-a"]
    # An origin that is down: 502 upstream_unavailable, catalogue unchanged.
    down = controller_settings(redis_url, f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(down), headers=AUTH) as other:
        assert_error(add(other, "tiny-b"), 502, "upstream_unavailable")
        assert [m["model_id"] for m in other.get("/v1/models").json()["models"]] == ["tiny-a"]


def test_catalogue_lookup_by_repo_id(client: TestClient) -> None:
    """``GET /v1/models?repo_id=&revision=``: how an edge finds the manifest of a Hub request."""
    a = add(client, "tiny-a").json()
    pinned = add(client, "tiny-a-pinned", "mini/tiny-a", revision=a["revision"]).json()
    add(client, "tiny-b")

    def ids(**params: str) -> list[str]:
        r = client.get("/v1/models", params=params)
        assert r.status_code == 200, r.text
        return [m["model_id"] for m in r.json()["models"]]

    assert ids(repo_id="mini/tiny-a") == ["tiny-a", "tiny-a-pinned"]
    assert ids(repo_id="mini/tiny-a", revision="main") == ["tiny-a"]
    assert ids(repo_id="mini/tiny-a", revision=a["revision"]) == ["tiny-a", "tiny-a-pinned"]
    assert ids(repo_id="mini/tiny-a", revision="0" * 40) == []
    assert ids(repo_id="mini/nope") == []
    # Only entries pinned to a commit: ``main`` still finds one of them.
    client.delete("/v1/models/tiny-a")
    assert ids(repo_id="mini/tiny-a", revision="main") == ["tiny-a-pinned"]
    assert pinned["revision"] == a["revision"]
    assert_error(client.get("/v1/models", params={"revision": "main"}), 400, "invalid_request")
    assert client.get("/v1/models", params={"repo_id": ""}).status_code == 422


def heartbeat(client: TestClient, node_id: str, token: str | None = TOKEN, **body):
    doc = {"url": f"http://{node_id}.test:8001", "capacity_bytes": 10**9, "position": [0, 0]}
    doc.update(body)
    headers = {"Authorization": f"Bearer {token}"} if token else NO_AUTH
    return client.put(f"/v1/nodes/{node_id}", json=doc, headers=headers)


def test_nodes_register_list_get(client: TestClient) -> None:
    r = heartbeat(client, "edge-1", position=[10.0, 5.0], models=[])
    assert r.status_code == 200 and r.json()["registered"] is True
    assert heartbeat(client, "edge-1").json()["registered"] is False
    node = client.get("/v1/nodes/edge-1").json()
    assert node["url"] == "http://edge-1.test:8001" and node["position"] == [0.0, 0.0]
    assert [n["node_id"] for n in client.get("/v1/nodes").json()["nodes"]] == ["edge-1"]
    assert_error(client.get("/v1/nodes/edge-9"), 404, "node_not_found")
    # Registering needs the token: the controller pushes plans (with its token) to that URL.
    assert_error(heartbeat(client, "edge-9", token=None), 401, "unauthorized")
    assert_error(heartbeat(client, "edge-9", token="wrong"), 401, "unauthorized")
    assert_error(client.get("/v1/nodes/edge-9"), 404, "node_not_found")
    assert heartbeat(client, "bad id!").status_code in (404, 422)
    assert heartbeat(client, "edge-2", url="ftp://x").status_code == 422
    # Unbounded capacity (an edge without EDGE_CAPACITY_BYTES) is accepted.
    assert heartbeat(client, "edge-3", capacity_bytes=None).status_code == 200
    assert client.get("/v1/nodes/edge-3").json()["capacity_bytes"] is None
    assert_error(client.delete("/v1/nodes/edge-3", headers=NO_AUTH), 401, "unauthorized")
    ok = client.delete("/v1/nodes/edge-3")
    assert ok.status_code == 200
    assert_error(client.get("/v1/nodes/edge-3"), 404, "node_not_found")


def test_routes_name_only_nodes_that_hold_blocks(client: TestClient, mini_origin: str) -> None:
    for model_id in MINI_MODELS:
        assert add(client, model_id).status_code == 201
    # edge-1 holds tiny-a; edge-2 holds tiny-b (shares the base layers with tiny-a); edge-3 none.
    heartbeat(client, "edge-1", position=[0, 0], models=["tiny-a"])
    heartbeat(client, "edge-2", position=[400, 0], models=["tiny-b"])
    heartbeat(client, "edge-3", position=[10, 0], models=[])
    topo = {"areas": {"near-1": {"x_m": 5, "y_m": 0}, "near-2": {"x_m": 395, "y_m": 0}}}
    assert client.put("/v1/topology", json=topo).status_code == 200

    route = client.get("/v1/routes/tiny-a", params={"area_id": "near-2"}).json()
    manifest = client.get("/v1/models/tiny-a").json()["manifest"]
    assert route["model_id"] == "tiny-a" and route["manifest"] == manifest
    kinds = [(s["kind"], s.get("node_id")) for s in route["sources"]]
    assert kinds == [("edge", "edge-2"), ("edge", "edge-1"), ("origin", None)]
    assert route["sources"][-1]["url"] == mini_origin
    assert route["sources"][0]["expected_ms"] < route["sources"][1]["expected_ms"]
    block_ids = {row[0] for f in manifest["files"] for row in f["blocks"]}
    assert set(route["blocks"]) == block_ids
    shared = {f"layer.{i}.weight" for i in range(4)}
    for f in manifest["files"]:
        for row in f["blocks"]:
            sources = route["blocks"][row[0]]
            if len(row) > 3 and row[3] in shared:
                assert sources == [0, 1, 2]  # both edges hold the base layers, nearest first
            else:
                assert sources == [1, 2]  # only edge-1 holds tiny-a's head and config
    # Nearer to edge-1: the order flips.
    near1 = client.get("/v1/routes/tiny-a", params={"x_m": 1, "y_m": 0}).json()
    assert [s.get("node_id") for s in near1["sources"]] == ["edge-1", "edge-2", None]
    # A model nobody holds completely: its shared layers still come from edges, its own
    # head only from the origin. An unknown area still gets a route.
    c = client.get("/v1/routes/tiny-c", params={"area_id": "elsewhere"}).json()
    assert [s["kind"] for s in c["sources"]] == ["edge", "edge", "origin"]
    c_manifest = client.get("/v1/models/tiny-c").json()["manifest"]
    for f in c_manifest["files"]:
        for row in f["blocks"]:
            want = [0, 1, 2] if len(row) > 3 and row[3] in shared else [2]
            assert sorted(c["blocks"][row[0]]) == want
    heartbeat(client, "edge-1", models=[])
    heartbeat(client, "edge-2", models=[])
    c = client.get("/v1/routes/tiny-c").json()
    assert c["sources"] == [{"url": mini_origin, "kind": "origin"}]
    assert all(v == [0] for v in c["blocks"].values())
    assert_error(client.get("/v1/routes/nope"), 404, "model_not_found")
    assert_error(client.get("/v1/routes/tiny-a", params={"x_m": 1}), 400, "invalid_request")


def test_demand_decays_and_counts_outcomes(client: TestClient, mini_origin: str) -> None:
    assert add(client, "tiny-a").status_code == 201
    heartbeat(client, "edge-1")
    report = {
        "model_id": "tiny-a",
        "area_id": "a1",
        "outcome": "hit",
        "seconds": 0.5,
        "bytes_by_source": {"http://edge-1.test:8001": 100, mini_origin: 20, "local": 5},
    }
    r = client.post("/v1/demand", json=report)
    assert r.status_code == 202 and r.json()["decayed_count"] == pytest.approx(1.0, abs=1e-3)
    r = client.post("/v1/demand", json={**report, "outcome": "miss"})
    assert r.json()["decayed_count"] == pytest.approx(2.0, abs=1e-3)
    assert_error(
        client.post("/v1/demand", json={**report, "model_id": "nope"}), 404, "model_not_found"
    )
    assert client.post("/v1/demand", json={**report, "outcome": "maybe"}).status_code == 422
    demand = client.get("/v1/status").json()["demand"]
    assert demand["requests"] == 2 and demand["hit"] == 1 and demand["miss"] == 1
    assert demand["hit_ratio"] == 0.5
    assert demand["bytes_by_kind"] == {"edge": 200, "origin": 40, "local": 10}


def test_topology_put_get_and_validation(client: TestClient) -> None:
    heartbeat(client, "edge-1", position=[100, 0])
    default = client.get("/v1/topology").json()
    assert default["source"] == "default" and set(default["areas"]) == {"area-edge-1"}
    doc = {
        "schema": "trimcache.topology/v1",
        "areas": {"a": {"x_m": 1, "y_m": 2}},
        "deadlines_s": {"default": 3.0, "tiny-a": 1.0},
        "channel": {"bandwidth_hz": 10e6},
    }
    r = client.put("/v1/topology", json=doc)
    assert r.status_code == 200 and r.json()["version"] == 1
    got = client.get("/v1/topology").json()
    assert got["source"] == "stored" and got["areas"] == {
        "a": {"x_m": 1.0, "y_m": 2.0, "weight": 1.0}
    }
    assert got["channel"]["bandwidth_hz"] == 10e6 and got["deadlines_s"]["tiny-a"] == 1.0
    assert client.put("/v1/topology", json=got).json()["version"] == 2  # GET output round-trips
    assert_error(
        client.put("/v1/topology", json={"areas": {"a": {"x_m": 1}}}), 400, "invalid_request"
    )
    assert_error(client.put("/v1/topology", json={"bogus": 1}), 400, "invalid_request")
    bad = {"channel": {"warp": 9}}
    assert_error(client.put("/v1/topology", json=bad), 400, "invalid_request")
    assert client.get("/v1/topology").json()["version"] == 2


def test_plan_needs_token_and_placement_without_nodes(client: TestClient) -> None:
    assert_error(client.post("/v1/placement:plan", headers=NO_AUTH), 401, "unauthorized")
    bad = {"Authorization": "Bearer wrong"}
    assert_error(client.post("/v1/placement:plan", headers=bad), 401, "unauthorized")
    assert client.get("/v1/placement").json()["version"] == 0
    r = client.post("/v1/placement:plan")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["servers"] == {}
    assert client.get("/v1/placement").json()["version"] == 1


def test_health_metrics_status(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "redis": "ok"}
    heartbeat(client, "edge-1")
    text = client.get("/metrics").text
    assert "controller_heartbeats_total 1.0" in text
    assert 'controller_http_requests_total{route="/v1/nodes/{node_id}",status="200"}' in text
    status = client.get("/v1/status").json()
    assert [n["node_id"] for n in status["nodes"]] == ["edge-1"]
    assert status["placement"]["version"] == 0 and status["catalogue"]["models"] == 0


def test_redis_down_is_503_and_recovers(mini_origin: str, tmp_path) -> None:
    """A private redis-server that we stop and start again under the same socket path."""
    from tests.controller.redis_proc import RedisProcess

    with RedisProcess(tmp_path) as proc:
        settings = controller_settings(proc.url, mini_origin, redis_timeout_s=0.5)
        with TestClient(create_app(settings)) as client:
            assert heartbeat(client, "edge-1").status_code == 200
            proc.stop()
            assert_error(heartbeat(client, "edge-1"), 503, "state_unavailable")
            assert_error(client.get("/v1/nodes"), 503, "state_unavailable")
            assert_error(client.get("/v1/routes/x"), 503, "state_unavailable")
            r = client.get("/healthz")
            assert r.status_code == 503 and r.json()["status"] == "unavailable"
            proc.start()
            assert client.get("/healthz").status_code == 200
            assert heartbeat(client, "edge-1").status_code == 200
            assert [n["node_id"] for n in client.get("/v1/nodes").json()["nodes"]] == ["edge-1"]


def test_topology_file_is_used_until_one_is_put(redis_url: str, mini_origin: str, tmp_path) -> None:
    path = tmp_path / "topology.json"
    doc = {
        "schema": "trimcache.topology/v1",
        "areas": {"area-1": {"x_m": 60, "y_m": 40, "weight": 1.0}},
        "channel": {"latency_ms": 5.0, "backhaul_bps": 1e8},
        "positions": {"edge-1": [0, 0]},
    }
    path.write_text(json.dumps(doc))
    settings = controller_settings(redis_url, mini_origin, topology_file=path)
    with TestClient(create_app(settings), headers=AUTH) as client:
        got = client.get("/v1/topology").json()
        assert got["source"] == "file" and set(got["areas"]) == {"area-1"}
        assert got["channel"]["latency_ms"] == 5.0 and got["positions"] == {"edge-1": [0.0, 0.0]}
        assert client.put("/v1/topology", json={"areas": {}}).status_code == 200
        assert client.get("/v1/topology").json()["source"] == "stored"
    path.write_text(json.dumps({"areas": {"a": {}}}))
    with pytest.raises(InvalidRequestError):
        create_app(Settings(redis_url=redis_url, topology_file=path))
