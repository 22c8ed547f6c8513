"""Control-plane safety (issue 13): auth on every write, the plan lock, handovers that never
lose a last copy, bounded pushes and retries, strict validation, versions that survive a wipe.

Real Redis, real uvicorn servers, real edge node apps; the only fault stand-ins are a socket
that accepts and never answers (a hung edge) and an edge whose store is too small (507).
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.settings import Settings
from controller.state import PLAN_LOCK_KEY
from tests.controller.conftest import AUTH, MINI_MODELS, TOKEN, controller_settings
from tests.helpers import live_server

NO_AUTH = {"Authorization": ""}
WRITE_METHODS = {"POST", "PUT", "DELETE", "PATCH"}


def settings_for(redis_url: str, origin: str, **extra: Any) -> Settings:
    return controller_settings(redis_url, origin, **{"retry_interval_s": 0, **extra})


@pytest.fixture
def controller(redis_url: str, mini_origin: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(redis_url, mini_origin)), headers=AUTH) as client:
        for model_id in MINI_MODELS:
            body = {"model_id": model_id, "repo_id": f"mini/{model_id}"}
            assert client.post("/v1/models", json=body).status_code == 201
        yield client


def write_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every state-changing operation of the app's OpenAPI document."""
    out = []
    for path, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        for method in operations:
            if method.upper() in WRITE_METHODS:
                concrete = path.replace("{model_id}", "tiny-a").replace("{node_id}", "edge-1")
                out.append((method.upper(), concrete))
    return out


# -- 1. one auth policy ------------------------------------------------------------------------


def test_every_write_route_needs_the_token_and_reads_stay_open(controller: TestClient) -> None:
    routes = write_routes(controller)
    assert ("PUT", "/v1/topology") in routes and ("POST", "/v1/demand") in routes
    for method, path in routes:
        for headers in (NO_AUTH, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = controller.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["X-Error-Code"] == "unauthorized"
    # Nothing changed: the catalogue is whole and no topology was stored.
    assert len(controller.get("/v1/models", headers=NO_AUTH).json()["models"]) == 3
    assert controller.get("/v1/topology", headers=NO_AUTH).json()["source"] == "default"
    for path in ("/v1/models", "/v1/nodes", "/v1/placement", "/v1/status", "/healthz"):
        assert controller.get(path, headers=NO_AUTH).status_code == 200, path


def test_no_token_configured_refuses_every_write(redis_url: str, mini_origin: str) -> None:
    settings = settings_for(redis_url, mini_origin, auth_token="")
    with TestClient(create_app(settings), headers=AUTH) as client:
        for method, path in write_routes(client):
            r = client.request(method, path, json={})
            assert r.status_code == 401, (method, path, r.text)
            assert "CONTROLLER_AUTH_TOKEN is not set" in r.json()["error"]["message"]
        assert client.get("/v1/models").status_code == 200
    # The edge nodes' token alone opens heartbeats, nothing else.
    settings = settings_for(redis_url, mini_origin, auth_token="", edge_auth_token="edge-t")
    with TestClient(create_app(settings)) as client:
        body = {"url": "http://127.0.0.1:9", "capacity_bytes": 1}
        ok = client.put("/v1/nodes/edge-1", json=body, headers={"Authorization": "Bearer edge-t"})
        assert ok.status_code == 200, ok.text
        r = client.delete("/v1/nodes/edge-1", headers={"Authorization": "Bearer edge-t"})
        assert r.status_code == 401


# -- 2. the plan lock --------------------------------------------------------------------------


def test_plan_lock_is_renewed_by_its_helper_thread(redis_url: str, mini_origin: str) -> None:
    settings = settings_for(redis_url, mini_origin, plan_lock_ttl_s=0.6)
    with TestClient(create_app(settings)) as client:
        planner = client.app.state.planner  # type: ignore[attr-defined]
        other = client.app.state.redis_state  # type: ignore[attr-defined]
        with planner._locked(blocking_timeout_s=1.0) as guard:
            assert guard is not None
            time.sleep(2.0)  # > 3 TTLs: only renewals keep it
            assert guard.owned()
            with other.plan_lock(timeout_s=0.6, blocking_timeout_s=0.0) as second:
                assert second is False
        with other.plan_lock(timeout_s=0.6, blocking_timeout_s=0.0) as second:
            assert second is True  # released on exit


def test_a_crashed_holders_lock_expires_after_its_short_ttl(
    redis_url: str, mini_origin: str
) -> None:
    settings = settings_for(redis_url, mini_origin)
    with TestClient(create_app(settings)) as client:
        state = client.app.state.redis_state  # type: ignore[attr-defined]
        guard = state.plan_lock(timeout_s=settings.plan_lock_ttl_s, blocking_timeout_s=0.0)
        guard.__enter__()  # a holder that dies without releasing
        ttl_ms = redis.Redis.from_url(redis_url).pttl(PLAN_LOCK_KEY)
        assert 0 < ttl_ms <= settings.plan_lock_ttl_s * 1000
        assert settings.plan_lock_ttl_s < 30


# -- 3. handovers keep last copies ------------------------------------------------------------


def register(client: TestClient, node_id: str, url: str, **extra: Any) -> None:
    body = {"url": url, "capacity_bytes": 10**9, "position": [0, 0], **extra}
    r = client.put(f"/v1/nodes/{node_id}", json=body)
    assert r.status_code == 200, r.text


def edge_models(url: str) -> set[str]:
    return {m["model_id"] for m in httpx.get(f"{url}/v1/models").json()["models"]}


def push(client: TestClient, version: int, servers: dict[str, list[str]]) -> dict[str, Any]:
    """Store a placement placing ``servers`` and push it, as a plan would."""
    planner = client.app.state.planner  # type: ignore[attr-defined]
    state = client.app.state.redis_state  # type: ignore[attr-defined]
    record = {
        "version": version,
        "servers": {n: {"models": m, "blocks": [], "used_bytes": 0} for n, m in servers.items()},
        "push": {n: {"status": "pending", "version": version, "at": time.time()} for n in servers},
    }
    state.save_placement(record)
    planner._push(record, state.live_nodes(), state.list_models())  # the whole round, here
    placement: dict[str, Any] = state.get_placement()
    return placement


def test_a_failed_handover_never_evicts_the_last_copy(controller: TestClient, edges: Any) -> None:
    e1 = edges("edge-1", None)
    e2 = edges("edge-2", 1000)  # its store cannot hold a model: every plan answers 507
    register(controller, "edge-1", e1)
    assert push(controller, 1, {"edge-1": ["tiny-a"]})["push"]["edge-1"]["status"] == "applied"
    register(controller, "edge-1", e1, models=["tiny-a"])
    register(controller, "edge-2", e2)
    placement = push(controller, 2, {"edge-1": [], "edge-2": ["tiny-a"]})
    assert placement["push"]["edge-2"]["code"] == "store_full"
    assert placement["push"]["edge-1"]["status"] == "retained"
    assert placement["push"]["edge-1"]["retained"] == ["tiny-a"]
    assert edge_models(e1) == {"tiny-a"}  # the only copy stays
    # Routes still name edge-1 for tiny-a.
    route = controller.get("/v1/routes/tiny-a").json()
    assert e1 in json.dumps(route)


def test_a_swap_moves_both_models_and_keeps_a_copy_throughout(
    controller: TestClient, edges: Any
) -> None:
    e1, e2 = edges("edge-1", None), edges("edge-2", None)
    register(controller, "edge-1", e1)
    register(controller, "edge-2", e2)
    push(controller, 1, {"edge-1": ["tiny-a"], "edge-2": ["tiny-c"]})
    register(controller, "edge-1", e1, models=["tiny-a"])
    register(controller, "edge-2", e2, models=["tiny-c"])
    placement = push(controller, 2, {"edge-1": ["tiny-c"], "edge-2": ["tiny-a"]})
    assert {n: p["status"] for n, p in placement["push"].items()} == {
        "edge-1": "applied",
        "edge-2": "applied",
    }
    assert edge_models(e1) == {"tiny-c"} and edge_models(e2) == {"tiny-a"}


def test_failed_pushes_back_off_within_a_budget(
    redis_url: str, mini_origin: str, edges: Any
) -> None:
    settings = settings_for(redis_url, mini_origin, retry_interval_s=10.0, push_retry_budget=3)
    with TestClient(create_app(settings), headers=AUTH) as client:
        for model_id in MINI_MODELS:
            body = {"model_id": model_id, "repo_id": f"mini/{model_id}"}
            assert client.post("/v1/models", json=body).status_code == 201
        register(client, "edge-2", edges("edge-2", 1000))
        planner = client.app.state.planner  # type: ignore[attr-defined]
        state = client.app.state.redis_state  # type: ignore[attr-defined]
        nodes = state.live_nodes()
        signature = planner.signature(nodes, planner.active_topology(nodes))
        state.save_plan_attempt({"at": time.time() + 10**6, "signature": signature})
        first = push(client, 1, {"edge-2": ["tiny-a"]})["push"]["edge-2"]
        assert first["status"] == "failed" and first["attempts"] == 1
        assert 5.0 <= first["retry_at"] - first["at"] <= 10.0
        assert planner.tick(now_s=first["at"] + 4.9) is None  # not due yet
        steps = []
        current = first
        while planner.tick(now_s=current["retry_at"]) == "repush":
            assert planner.wait_rounds(timeout_s=60)
            current = state.get_placement()["push"]["edge-2"]
            steps.append(current["retry_at"] - current["at"])
        assert current["attempts"] == 3  # the budget: no more retries for this version
        assert planner.tick(now_s=current["retry_at"] + 10**5) is None
        assert 10.0 <= steps[0] <= 20.0 and 20.0 <= steps[1] <= 40.0  # doubling, jittered


# -- 4. bounded pushes, validation, versions ---------------------------------------------------


def test_a_hung_edge_is_given_up_when_its_progress_stalls(redis_url: str, mini_origin: str) -> None:
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # accepts connections in the kernel and never answers
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    settings = settings_for(redis_url, mini_origin, push_stall_s=1.0, push_timeout_s=300)
    try:
        with TestClient(create_app(settings), headers=AUTH) as client:
            assert client.post("/v1/models", json={"model_id": "tiny-a", "repo_id": "mini/tiny-a"})
            register(client, "edge-9", url)
            status = push(client, 1, {"edge-9": ["tiny-a"]})["push"]["edge-9"]
            assert status["status"] == "stalled" and status["code"] == "push_stalled"
    finally:
        hung.close()


def test_a_wiped_controller_continues_above_the_version_an_edge_applied(
    controller: TestClient, redis_url: str, edges: Any
) -> None:
    e1 = edges("edge-1", None)
    register(controller, "edge-1", e1)
    assert push(controller, 7, {"edge-1": ["tiny-a"]})["push"]["edge-1"]["status"] == "applied"
    redis.Redis.from_url(redis_url).flushdb()  # counter, placement, catalogue and nodes gone
    register(controller, "edge-1", e1)  # a heartbeat that does not name its version
    assert controller.post("/v1/placement:plan").json()["version"] == 8


def test_placement_versions_survive_a_redis_wipe(controller: TestClient, redis_url: str) -> None:
    register(controller, "edge-1", "http://127.0.0.1:9", plan_version=41)
    assert controller.get("/v1/nodes/edge-1").json()["plan_version"] == 41
    assert controller.post("/v1/placement:plan").json()["version"] == 42
    redis.Redis.from_url(redis_url).flushdb()  # the wipe: counter, placement and nodes gone
    # The edge's next heartbeat reports the version it applied (42 in the real system).
    register(controller, "edge-1", "http://127.0.0.1:9", plan_version=42)
    assert controller.post("/v1/placement:plan").json()["version"] == 43


BAD_TOPOLOGIES = [
    '{"areas": {"a": {"x_m": NaN, "y_m": 0}}}',
    '{"areas": {"a": {"x_m": Infinity, "y_m": 0}}}',
    '{"areas": {"a": {"x_m": 1e308, "y_m": 0}}}',
    '{"areas": {"a": {"x_m": 1e999, "y_m": 0}}}',
    '{"areas": {"a": {"x_m": 0, "y_m": 0, "weight": -1}}}',
    '{"channel": {"latency_ms": NaN}}',
    '{"channel": {"tx_power_dbm": 1e308}}',
    '{"channel": {"backhaul_bps": 0}}',
    '{"positions": {"edge-1": [NaN, 0]}}',
    '{"positions": {"edge-1": [1e308, 1e308]}}',
    '{"deadlines_s": {"default": Infinity}}',
    '{"areas": {"' + "a" * 300 + '": {"x_m": 0, "y_m": 0}}}',
    '{"areas": {"a": {"x_m": ' + "9" * 400 + ', "y_m": 0}}}',
]


@pytest.mark.parametrize("doc", BAD_TOPOLOGIES)
def test_bad_numbers_in_a_topology_are_400(controller: TestClient, doc: str) -> None:
    r = controller.put(
        "/v1/topology", content=doc, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.headers["X-Error-Code"] == "invalid_request"
    assert controller.get("/v1/topology").json()["source"] == "default"
    assert controller.get("/v1/routes/tiny-a", params={"area_id": "a"}).status_code == 200


def test_bad_numbers_and_ids_elsewhere_are_client_errors(controller: TestClient) -> None:
    for x in ("nan", "inf", "-inf", "1e308", "1e999"):
        r = controller.get("/v1/routes/tiny-a", params={"x_m": x, "y_m": "0"})
        assert r.status_code == 422, (x, r.text)
    for body in (
        {"model_id": "tiny-a", "seconds": math.inf},
        {"model_id": "tiny-a", "bytes_by_source": {"local": 10**30}},
        {"model_id": "tiny-a", "area_id": "a" * 300},
        {"model_id": "x" * 300},
    ):
        content = json.dumps(body)  # allow_nan: Infinity reaches the server
        r = controller.post(
            "/v1/demand", content=content, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert r.status_code == 422, (body, r.text)
    for repo in ("a" * 300, "org/" + "b" * 300, "org/x/y"):
        r = controller.post("/v1/models", json={"model_id": "m", "repo_id": repo})
        assert r.status_code == 422, (repo, r.text)
    beat = {"url": "http://127.0.0.1:9", "position": [math.nan, 0]}
    r = controller.put(
        "/v1/nodes/edge-1", content=json.dumps(beat), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    for path in ("/v1/routes/caf\u00e9\u2603", "/v1/models/\u4e2d", "/v1/nodes/\u00ff"):
        r = controller.get(path)
        assert r.status_code in (404, 422), (path, r.text)


def test_bodies_are_bounded_in_size_and_time(redis_url: str, mini_origin: str) -> None:
    settings = settings_for(redis_url, mini_origin, max_body_bytes=4096, read_timeout_s=0.5)
    with live_server(create_app(settings)) as url:
        r = httpx.put(f"{url}/v1/topology", content=b"x" * 5000, headers=AUTH)
        assert r.status_code == 413 and r.headers["X-Error-Code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:
            yield b'{"areas": {}' + b" " * 3000
            yield b" " * 3000  # declared length unknown (chunked): counted as it arrives

        r = httpx.put(f"{url}/v1/topology", content=chunks(), headers=AUTH)
        assert r.status_code == 413
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as half:
            half.sendall(
                b"PUT /v1/topology HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            half.settimeout(30)
            answer = half.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert httpx.get(f"{url}/healthz").status_code == 200


# -- the edge side: fencing, the shared auth policy, bounded inputs ---------------------------


def test_an_edge_refuses_a_plan_older_than_the_one_it_applied(
    controller: TestClient, edges: Any
) -> None:
    e1 = edges("edge-1", None)
    register(controller, "edge-1", e1)
    assert push(controller, 5, {"edge-1": ["tiny-a"]})["push"]["edge-1"]["status"] == "applied"
    register(controller, "edge-1", e1, models=["tiny-a"])
    late = push(controller, 4, {"edge-1": ["tiny-b"]})["push"]["edge-1"]  # a lapsed planner
    assert late["status"] == "failed" and late["code"] == "stale_plan"
    assert late["http_status"] == 409
    assert edge_models(e1) == {"tiny-a"}
    assert httpx.get(f"{e1}/v1/plan").json()["version"] == 5
    # The same version again is a re-apply, a newer one applies.
    assert push(controller, 5, {"edge-1": ["tiny-a"]})["push"]["edge-1"]["status"] == "applied"
    assert push(controller, 6, {"edge-1": ["tiny-b"]})["push"]["edge-1"]["status"] == "applied"
    assert edge_models(e1) == {"tiny-b"}


def test_the_edge_applies_the_same_auth_policy_and_bounds(edges: Any, tmp_path: Path) -> None:
    from edge_node.app import create_app as create_edge
    from edge_node.settings import Settings as EdgeSettings

    url = edges("edge-1", None)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.delete(f"{url}/v1/models/tiny-a", headers=headers)
        assert r.status_code == 401 and r.headers["x-error-code"] == "unauthorized"
    bare = EdgeSettings(node_id="edge-2", data_dir=tmp_path / "bare", durable=False)
    with live_server(create_edge(bare)) as bare_url:
        r = httpx.put(f"{bare_url}/v1/plan", json={}, headers=AUTH)
        assert r.status_code == 401
        assert "EDGE_AUTH_TOKEN is not set" in r.json()["error"]["message"]
    for path in ("/v1/models/caf\u00e9\u2603/manifest", "/v1/blocks/\u4e2d"):
        r = httpx.get(url + path)
        assert 400 <= r.status_code < 500, (path, r.text)
    from edge_node.app import MAX_BODY_BYTES

    big = b"x" * (MAX_BODY_BYTES + 1)
    r = httpx.put(f"{url}/v1/plan", content=big, headers=AUTH)
    assert r.status_code == 413 and r.headers["x-error-code"] == "payload_too_large"
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_heartbeats_name_the_applied_version(
    controller: TestClient, tmp_path: Path, mini_origin: str
) -> None:
    from edge_node.app import create_app as create_edge
    from edge_node.heartbeat import heartbeat_body
    from edge_node.settings import Settings as EdgeSettings

    settings = EdgeSettings(
        node_id="edge-1",
        data_dir=tmp_path / "edge-1",
        auth_token=TOKEN,
        origin_url=mini_origin,
        durable=False,
        scrub_on_start=False,
    )
    app = create_edge(settings)
    with live_server(app) as url:
        assert heartbeat_body(app.state.node)["plan_version"] is None
        register(controller, "edge-1", url)
        push(controller, 3, {"edge-1": ["tiny-a"]})
        body = heartbeat_body(app.state.node)
        assert body["plan_version"] == 3
        r = controller.put("/v1/nodes/edge-1", json=body)
        assert r.status_code == 200, r.text
        assert controller.get("/v1/nodes/edge-1").json()["plan_version"] == 3


def test_a_full_disk_is_507_store_full_not_500(
    controller: TestClient, edges: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC cannot be produced on demand here: the store's file writes raise it instead."""
    import errno
    import os

    from core.errors import StoreFullError
    from core.store import BlockStore

    store = BlockStore(tmp_path / "store", durable=False)
    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, fd: int) -> None:
            self.fh = real_fdopen(fd, "wb")

        def __enter__(self) -> FullFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, _data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.store.os.fdopen", lambda fd, _mode: FullFile(fd))
    with pytest.raises(StoreFullError) as info:
        store.put_stream([b"abc"])
    assert info.value.code == "store_full" and info.value.status_code == 507
    assert store.used_bytes == 0 and list((tmp_path / "store").rglob("*.tmp*")) == []
    # Through an edge applying a plan: the push records 507 store_full.
    e1 = edges("edge-1", None)
    register(controller, "edge-1", e1)
    status = push(controller, 1, {"edge-1": ["tiny-a"]})["push"]["edge-1"]
    assert status["http_status"] == 507 and status["code"] == "store_full", status
