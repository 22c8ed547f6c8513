"""The delay objective (``CONTROLLER_OBJECTIVE=delay``): plans come from the delay solvers over
the delay model, routes order each block's sources by expected delay and migrate.

A real controller app (Redis, the mini origin) and two real edge node apps: edge-1 at (0, 0)
with room for one model, edge-2 at (400, 0) with room for all; one user area 20 m from edge-1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from controller import delay_planning
from controller.app import create_app
from controller.planner import Planner
from controller.settings import Settings
from tests.controller.conftest import AUTH, MINI_MODELS, controller_settings
from tests.helpers import plan_and_wait, wait_until

TOPOLOGY = {
    "schema": "trimcache.topology/v1",
    "areas": {"area-1": {"x_m": 20.0, "y_m": 0.0}},
    "positions": {"edge-1": [0.0, 0.0], "edge-2": [400.0, 0.0]},
}
#: The shared base (4 x 32 KiB) and one 8 KiB head: one model fits on edge-1, not two.
EDGE1_CAPACITY = 140_000


def _controller(redis_url: str, mini_origin: str, **extra: Any) -> TestClient:
    settings = controller_settings(redis_url, mini_origin, objective="delay", **extra)
    client = TestClient(create_app(settings), headers=AUTH)
    client.__enter__()
    for model_id in MINI_MODELS:
        r = client.post("/v1/models", json={"model_id": model_id, "repo_id": f"mini/{model_id}"})
        assert r.status_code == 201, r.text
    assert client.put("/v1/topology", json=TOPOLOGY).status_code == 200
    return client


@pytest.fixture
def delay_controller(redis_url: str, mini_origin: str) -> Iterator[TestClient]:
    client = _controller(redis_url, mini_origin)
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def _register(client: TestClient, node_id: str, url: str, capacity: int | None) -> None:
    body = {"url": url, "capacity_bytes": capacity}
    assert client.put(f"/v1/nodes/{node_id}", json=body).status_code == 200


def test_settings_name_the_objective_and_the_delay_solver() -> None:
    settings = Settings(objective="delay")
    assert settings.planning_solver == "delay-greedy" and settings.route_migration
    assert not Settings().route_migration and Settings().planning_solver == "trimcaching-gen"
    assert Settings(migration="on").route_migration
    assert not Settings(objective="delay", migration="off").route_migration
    with pytest.raises(ValidationError, match="unknown delay solver"):
        Settings(delay_solver="nope")
    with pytest.raises(ValidationError):
        Settings(objective="latency")  # type: ignore[arg-type]


def test_plans_come_from_delay_greedy_and_routes_follow_expected_delay(
    delay_controller: TestClient, edges: Any
) -> None:
    client = delay_controller
    urls = {"edge-1": edges("edge-1", EDGE1_CAPACITY), "edge-2": edges("edge-2", None)}
    _register(client, "edge-1", urls["edge-1"], EDGE1_CAPACITY)
    _register(client, "edge-2", urls["edge-2"], 10**9)
    record = plan_and_wait(client)
    assert record["solver"] == "delay-greedy"
    assert {p["status"] for p in record["push"].values()} == {"applied"}
    view = client.get("/v1/placement").json()
    assert view["objective"] == "delay"
    delay = view["last_plan"]["delay"]
    assert delay["solver"] == "delay-greedy" and delay["slots"] == delay_planning.N_SLOTS

    # The placement is exactly delay-greedy's on the delay model of this state (whole models).
    planner: Planner = client.app.state.planner  # type: ignore[attr-defined]
    nodes = planner.state.live_nodes()
    view_topology = planner.active_topology(nodes)
    problem = planner.build_problem(nodes, planner.state.list_models(), view_topology)
    positions = {n.node_id: view_topology.topology.positions[n.node_id] for n in nodes}
    dp = delay_planning.delay_problem(problem, positions, view_topology.topology, seed=0)
    assert dp is not None
    expected = delay_planning.solve(problem, dp, solver="delay-greedy", seed=0, time_limit_s=30)
    for node_id, placed in record["servers"].items():
        assert set(placed["blocks"]) == set(expected.servers[node_id].blocks)
    assert delay["candidate_mean_s"] == pytest.approx(
        delay_planning.mean_delay_s(dp, expected.blocks_by_server())
    )
    assert delay["candidate_mean_s"] < delay_planning.mean_delay_s(dp, {})  # beats holding none

    # Routes: the serving edge (edge-1) first for what it holds or can migrate; a model it
    # lacks is migrated from edge-2 when that beats the origin (1 Gbit/s vs 10 Gbit/s links).
    held1 = set(record["servers"]["edge-1"]["models"])
    held2 = set(record["servers"]["edge-2"]["models"])
    lacking = sorted((held2 - held1) & set(MINI_MODELS))
    assert held1 and lacking, record["servers"]

    def route() -> dict[str, Any]:
        doc: dict[str, Any] = client.get(
            f"/v1/routes/{lacking[0]}", params={"area_id": "area-1"}
        ).json()
        return doc

    wait_until(lambda: "edge-2" in str(route()["sources"]), what="edge-2 confirmed its models")
    route_doc = route()
    names = [s.get("node_id", s["kind"]) for s in route_doc["sources"]]
    hows = {d["how"] for d in route_doc["delivery"].values()}
    assert hows == {"held", "migrate"}, route_doc["delivery"]
    for block_id, candidates in route_doc["blocks"].items():
        d = route_doc["delivery"][block_id]
        assert candidates[0] == d["source"] == names.index("edge-1")
        assert candidates[-1] == names.index("origin")
        if d["how"] == "migrate":
            assert names[d["migrate_from"]] == "edge-2" and candidates[1] == d["migrate_from"]


def test_marl_without_a_checkpoint_is_a_clear_plan_error(
    redis_url: str, mini_origin: str, edges: Any
) -> None:
    client = _controller(redis_url, mini_origin, delay_solver="marl")
    try:
        _register(client, "edge-1", edges("edge-1", None), 10**9)
        r = client.post("/v1/placement:plan")
        assert r.status_code == 200, r.text
        last = r.json()["last_plan"]
        assert last["outcome"] == "error"
        assert "CONTROLLER_MARL_CHECKPOINT" in last["error"]
    finally:
        client.__exit__(None, None, None)
