"""The planner: pure ordering/demand/topology pieces, then plans pushed to real edge apps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.demand import request_probabilities, zipf_prior
from controller.holdings import Holdings
from controller.topology import Topology, default_topology, delivery_ms, reachable_sets
from tests.controller.conftest import (
    AUTH,
    MINI_MODELS,
    ORIGIN_TOKEN,
    controller_settings,
)
from tests.helpers import plan_and_wait

ORIGIN_AUTH = {"Authorization": f"Bearer {ORIGIN_TOKEN}"}


def _next_node(
    pending: list[str], targets: dict[str, frozenset[str]], held: dict[str, frozenset[str]]
) -> str | None:
    return Holdings(targets, held).next_node(pending)


def test_next_node_keeps_last_copies_until_peers_fetched_them() -> None:
    held = {"a": frozenset({"x"}), "b": frozenset()}
    targets = {"a": frozenset({"y"}), "b": frozenset({"x"})}
    # a would evict x, the only copy b still needs: b goes first.
    assert _next_node(["a", "b"], targets, held) == "b"
    # Once another node holds x too, a is safe.
    held2 = {**held, "c": frozenset({"x"})}
    assert _next_node(["a", "b"], targets, held2) == "a"
    # Nothing safe (a swap): None, and the planner sends a retaining plan instead.
    cyc_held = {"a": frozenset({"x"}), "b": frozenset({"y"})}
    cyc_targets = {"a": frozenset({"y"}), "b": frozenset({"x"})}
    assert _next_node(["a", "b"], cyc_targets, cyc_held) is None
    # A node placed to hold x that is not pending any more (its push failed) still protects x.
    assert _next_node(["a"], targets, held) is None


def test_holdings_indexes_follow_each_confirmed_change() -> None:
    """The inverted indexes answer what a walk over every node would, after any change."""
    import random

    rng = random.Random(7)
    blocks = [f"b{i}" for i in range(12)]
    nodes = [f"n{i}" for i in range(6)]
    targets = {n: frozenset(rng.sample(blocks, 4)) for n in nodes}
    held = {n: frozenset(rng.sample(blocks, rng.randrange(5))) for n in nodes}
    holdings = Holdings(targets, held)
    for step in range(60):
        node = rng.choice(nodes)
        held[node] = frozenset(rng.sample(blocks, rng.randrange(6)))
        holdings.set_held(node, held[node])
        for b in blocks:
            assert holdings.holders(b) == {n for n in nodes if b in held[n]}, step
            assert holdings.lacking(b) == {n for n in nodes if b in targets[n] - held[n]}
        for n in nodes:
            anywhere = frozenset().union(*held.values())
            assert holdings.unheld(n) == targets[n] - anywhere
            evicts = held[n] - targets[n]
            wanted = {b for b in evicts for m in nodes if m != n and b in targets[m] - held[m]}
            only = {b for b in wanted if not any(b in held[m] for m in nodes if m != n)}
            assert holdings.last_copies(n) == only


def test_request_probabilities() -> None:
    models = ["m0", "m1", "m2", "m3"]
    none = request_probabilities(["a1", "a2"], models, {})
    assert none["a1"] == pytest.approx(zipf_prior("a1", models), rel=1e-9)
    assert none["a1"] != none["a2"]  # rankings differ per area, deterministically
    assert request_probabilities(["a1"], models, {}) == request_probabilities(["a1"], models, {})
    hot = request_probabilities(["a1"], models, {"a1": {"m3": 99.0, "gone": 5.0}})
    assert sum(hot["a1"].values()) <= 1.0 and sum(hot["a1"].values()) == pytest.approx(1.0)
    assert hot["a1"]["m3"] > 0.95 and min(hot["a1"].values()) > 0
    assert request_probabilities(["a1"], [], {}) == {"a1": {}}
    # Demand from an unknown area counts for every known area, split evenly.
    spread = request_probabilities(["a1", "a2"], models, {"unknown": {"m0": 200.0}})
    direct = request_probabilities(["a1", "a2"], models, {"a1": {"m0": 100.0}, "a2": {"m0": 100.0}})
    assert spread == direct


def test_topology_reachability_and_delivery_times() -> None:
    nodes = {"n1": (0.0, 0.0), "n2": (1000.0, 0.0)}
    topo = default_topology(nodes)
    assert set(topo.areas) == {"area-n1", "area-n2"}
    reach = reachable_sets(topo, nodes, {"small": 10**6, "huge": 10**12})
    assert reach["area-n1"] == {"n1": ["small"]}  # n2 is out of coverage and not a neighbour
    times = delivery_ms(topo, (10.0, 0.0), nodes, 10**8)
    assert times["n1"] < times["n2"]
    tight = Topology.from_json(
        {"areas": {"a": {"x_m": 0, "y_m": 0}}, "deadlines_s": {"default": 1e-6}}
    )
    assert reachable_sets(tight, nodes, {"small": 10**6}) == {"a": {}}


# ---------------------------------------------------------------------------------------------
# Plans pushed to real edge node apps (in-process uvicorn servers).


@pytest.fixture
def controller(redis_url: str, mini_origin: str) -> Iterator[TestClient]:
    settings = controller_settings(redis_url, mini_origin, retry_interval_s=0)
    with TestClient(create_app(settings), headers=AUTH) as client:
        for model_id in MINI_MODELS:
            r = client.post(
                "/v1/models", json={"model_id": model_id, "repo_id": f"mini/{model_id}"}
            )
            assert r.status_code == 201, r.text
        yield client


def register(
    client: TestClient, node_id: str, url: str, capacity: int | None, **extra: Any
) -> None:
    body = {"url": url, "capacity_bytes": capacity, "position": [0, 0], **extra}
    assert client.put(f"/v1/nodes/{node_id}", json=body, headers=AUTH).status_code == 200


def block_sizes(client: TestClient) -> dict[str, dict[str, int]]:
    out = {}
    for m in MINI_MODELS:
        manifest = client.get(f"/v1/models/{m}").json()["manifest"]
        out[m] = {row[0]: row[2] for f in manifest["files"] for row in f["blocks"]}
    return out


def edge_models(url: str) -> set[str]:
    return {m["model_id"] for m in httpx.get(f"{url}/v1/models").json()["models"]}


def test_plan_push_migrates_between_real_edges(
    controller: TestClient, edges: Any, mini_origin: str
) -> None:
    sizes = block_sizes(controller)
    unique = {b: n for s in sizes.values() for b, n in s.items()}
    url1 = edges("edge-1", None)
    register(controller, "edge-1", url1, None)
    httpx.post(f"{mini_origin}/v1/stats/reset", headers=ORIGIN_AUTH).raise_for_status()
    first = plan_and_wait(controller)
    assert first["push"]["edge-1"]["status"] == "applied"
    # Unbounded and alone: edge-1 holds the whole catalogue, every block from the origin once.
    assert edge_models(url1) == set(MINI_MODELS) == set(first["servers"]["edge-1"]["models"])
    origin_bytes = httpx.get(f"{mini_origin}/v1/stats").json()["bytes_served"]
    assert origin_bytes == sum(unique.values())

    # A second node far away (its users cannot reach edge-1): it gets models of its own, and
    # they come from edge-1, not the origin.
    url2 = edges("edge-2", None)
    register(controller, "edge-2", url2, None, position=[5000, 0])
    second = plan_and_wait(controller)
    assert second["version"] == first["version"] + 1
    assert second["push"]["edge-2"]["status"] == "applied"
    assert edge_models(url2) == set(second["servers"]["edge-2"]["models"]) != set()
    fetched = second["push"]["edge-2"]["fetched_bytes_by_source"]
    assert set(fetched) <= {url1} and sum(fetched.values()) > 0
    assert httpx.get(f"{mini_origin}/v1/stats").json()["bytes_served"] == origin_bytes
    # The node's confirmed models came from the plan response.
    assert set(controller.get("/v1/nodes/edge-2").json()["models"]) == edge_models(url2)
    status = controller.get("/v1/status").json()
    assert status["placement"]["version"] == second["version"]
    assert status["last_plan"]["outcome"] == "ok"


def test_rejected_plan_is_recorded_retried_and_never_routed(
    controller: TestClient, edges: Any
) -> None:
    sizes = block_sizes(controller)
    small = min(sum(s.values()) for s in sizes.values()) // 2
    url = edges("edge-1", small)  # the node really holds less than half a model...
    register(controller, "edge-1", url, 10**9)  # ...but registers a large capacity
    placement = plan_and_wait(controller)
    push = placement["push"]["edge-1"]
    assert (
        push["status"] == "failed" and push["code"] == "store_full" and push["http_status"] == 507
    )
    assert placement["servers"]["edge-1"]["models"]  # intended, but not confirmed
    for m in MINI_MODELS:
        route = controller.get(f"/v1/routes/{m}").json()
        assert [s["kind"] for s in route["sources"]] == ["origin"]
    # The loop retries failed pushes (same version).
    planner = controller.app.state.planner  # type: ignore[attr-defined]
    assert planner.tick() == "repush"
    assert planner.wait_rounds(timeout_s=120)
    again = controller.get("/v1/placement").json()
    assert again["version"] == placement["version"]
    assert again["push"]["edge-1"]["status"] == "failed"
    assert again["push"]["edge-1"]["at"] > push["at"]
    # An unreachable node is recorded as such.
    register(controller, "edge-1", "http://127.0.0.1:9", 10**9)
    planner.repush(["edge-1"])
    assert planner.wait_rounds(timeout_s=120)
    assert controller.get("/v1/placement").json()["push"]["edge-1"]["status"] == "unreachable"


def test_catalogue_rebuilt_from_edge_reports(
    controller: TestClient, edges: Any, redis_url: str
) -> None:
    import redis

    url = edges("edge-1", None)
    register(controller, "edge-1", url, None)
    assert plan_and_wait(controller)["version"] > 0
    before = {m: controller.get(f"/v1/models/{m}").json()["manifest"] for m in MINI_MODELS}
    # Redis loses everything (no persistence): the node's next heartbeat brings its models back.
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    assert controller.get("/v1/models").json() == {"models": []}
    register(controller, "edge-1", url, None, models=list(MINI_MODELS))
    planner = controller.app.state.planner  # type: ignore[attr-defined]
    planner.tick()
    after = {m: controller.get(f"/v1/models/{m}").json()["manifest"] for m in MINI_MODELS}
    assert after == before
    # A model deleted on purpose is not adopted again while a node still reports it.
    assert controller.delete("/v1/models/tiny-a").status_code == 200
    planner.tick()
    assert controller.get("/v1/models/tiny-a").status_code == 404


def test_a_node_handed_back_by_its_agent_is_planned_without_a_manual_plan(
    controller: TestClient, edges: Any
) -> None:
    url = edges("edge-1", None)
    register(controller, "edge-1", url, None, cache_policy="marl")
    assert "edge-1" not in plan_and_wait(controller)["servers"]  # the agent decides there
    planner = controller.app.state.planner  # type: ignore[attr-defined]
    now = time.time()
    assert planner.tick(now_s=now) is None  # nothing changed
    register(controller, "edge-1", url, None)  # the agent is off: no policy any more
    assert planner.tick(now_s=now) is None  # the change settles first
    assert planner.tick(now_s=now + planner.settings.settle_s) == "plan"
    assert planner.wait_rounds(timeout_s=120)
    placement = controller.get("/v1/placement").json()
    assert placement["servers"]["edge-1"]["models"]
    assert placement["push"]["edge-1"]["status"] == "applied"


@pytest.mark.parametrize("solver", ["trimcaching-spec", "independent", "popularity", "optimal"])
def test_every_solver_plans_and_spec_falls_back(
    redis_url: str, mini_origin: str, edges: Any, solver: str
) -> None:
    settings = controller_settings(redis_url, mini_origin, solver=solver)
    with TestClient(create_app(settings), headers=AUTH) as client:
        for model_id in MINI_MODELS:
            body = {"model_id": model_id, "repo_id": f"mini/{model_id}"}
            assert client.post("/v1/models", json=body).status_code == 201
        url = edges("edge-1", None)
        register(client, "edge-1", url, None)
        placement = plan_and_wait(client)
        assert placement["push"]["edge-1"]["status"] == "applied"
        assert edge_models(url) == set(placement["servers"]["edge-1"]["models"]) != set()
        last = client.get("/v1/status").json()["last_plan"]
        assert last["outcome"] == "ok"
        if placement["solver"] != solver:  # e.g. spec with too many shared blocks
            assert placement["solver"] == "trimcaching-gen"
            assert last["fallback_from"]["solver"] == solver


def test_demand_steers_the_placement(controller: TestClient, edges: Any) -> None:
    sizes = block_sizes(controller)
    one_model = max(sum(s.values()) for s in sizes.values())
    url = edges("edge-1", one_model)  # room for exactly one model (they share the base)
    register(controller, "edge-1", url, one_model + 100)
    for wanted, reports in (("tiny-c", 20), ("tiny-a", 60)):
        for _ in range(reports):
            report = {"model_id": wanted, "area_id": "area-edge-1", "outcome": "miss"}
            assert controller.post("/v1/demand", json=report).status_code == 202
        placement = plan_and_wait(controller)
        assert placement["servers"]["edge-1"]["models"] == [wanted]
        assert edge_models(url) == {wanted}


def test_push_abandoned_by_a_dead_controller_is_resumed(controller: TestClient, edges: Any) -> None:
    url = edges("edge-1", None)
    register(controller, "edge-1", url, None)
    planner = controller.app.state.planner  # type: ignore[attr-defined]
    state = planner.state
    # A placement stored by a controller that died before pushing anything.
    version = state.next_placement_version()
    record = {
        "version": version,
        "servers": {"edge-1": {"models": ["tiny-b"], "blocks": [], "used_bytes": 0}},
        "push": {"edge-1": {"status": "pending", "version": version, "at": 0.0}},
    }
    state.save_placement(record)
    state.save_plan_attempt(
        {
            "at": time.time(),
            "signature": planner.signature(
                state.live_nodes(), planner.active_topology(state.live_nodes())
            ),
        }
    )
    # While another planner holds the lock, nothing is touched.
    with state.plan_lock(timeout_s=5, blocking_timeout_s=0):
        assert planner.tick() == "repush"
        assert controller.get("/v1/placement").json()["push"]["edge-1"]["status"] == "pending"
    assert planner.tick() == "repush"
    assert planner.wait_rounds(timeout_s=120)
    push = controller.get("/v1/placement").json()["push"]["edge-1"]
    assert push["status"] == "applied" and push["version"] == version
    assert edge_models(url) == {"tiny-b"}
    assert planner.tick() is None  # settled: nothing more to do


def test_replan_keeps_a_placement_that_still_pays_and_replaces_an_invalid_one(
    controller: TestClient, edges: Any
) -> None:
    sizes = block_sizes(controller)
    unique = {b: n for s in sizes.values() for b, n in s.items()}
    # Each node fits all but one model: the placement must choose.
    capacity = sum(unique.values()) - min(len(s) for s in sizes.values())
    urls = {n: edges(n, capacity) for n in ("edge-1", "edge-2")}
    for node_id, url in urls.items():
        register(controller, node_id, url, capacity)
    first = plan_and_wait(controller)
    assert first["last_plan"]["outcome"] == "ok"
    assert first["last_plan"]["decision"]["current_invalid"] == "no placement yet"
    applied = {n: httpx.get(f"{u}/v1/plan").json()["version"] for n, u in urls.items()}
    assert set(applied.values()) == {first["version"]}

    # Nothing changed: the placement stays, no version, no push (the edges saw nothing).
    again = plan_and_wait(controller)
    assert again["version"] == first["version"] and again["servers"] == first["servers"]
    kept = again["last_plan"]
    assert kept["outcome"] == "kept" and kept["version"] == first["version"]
    assert kept["decision"]["decision"] == "keep" and kept["decision"]["gain"] is not None
    assert controller.get("/v1/placement").json()["last_plan"] == kept
    assert {n: httpx.get(f"{u}/v1/plan").json()["version"] for n, u in urls.items()} == applied
    assert controller.get("/v1/status").json()["last_plan"]["outcome"] == "kept"

    # A placed model leaves the catalogue: re-planned at once, whatever the gain.
    placed = next(m for p in first["servers"].values() for m in p["models"])
    assert controller.delete(f"/v1/models/{placed}").status_code == 200
    third = plan_and_wait(controller)
    assert third["version"] > first["version"]
    assert third["last_plan"]["decision"]["current_invalid"] == f"model {placed} left the catalogue"
    assert all(placed not in edge_models(u) for u in urls.values())

    # A node joins: re-planned at once too.
    url3 = edges("edge-3", capacity)
    register(controller, "edge-3", url3, capacity)
    fourth = plan_and_wait(controller)
    assert fourth["version"] > third["version"]
    assert fourth["last_plan"]["decision"]["current_invalid"] == "server edge-3 joined"


def test_a_wait_names_the_fetch_it_waits_for_and_ends_with_it() -> None:
    """_wait_reason: a node needing a block no node holds waits on the node of the round
    fetching it (the reason the round indexes it by), and not once the block is held, the
    fetcher ended, or its claim expired unaccepted; a node whose evictions remove a last copy
    waits on the node placed to hold it while that node is in the round."""
    from controller import planner
    from controller.round_waits import Wait

    def push(holdings: Holdings) -> planner._Push:
        return planner._Push(1, {}, {}, {}, holdings, {}, {})

    targets = {"a": frozenset({"b1"}), "b": frozenset({"b1", "b2"})}
    for end in ("held", "ended", "expired"):
        holdings = Holdings(targets, {"a": frozenset(), "b": frozenset()})
        state = push(holdings)
        state.started["a"] = time.monotonic()
        fetching = {"b1": "a", "b2": "b"}
        assert planner._wait_reason("b", state, {"a", "b"}, fetching) == Wait("a", "b1", True)
        assert planner._wait_reason("a", state, {"a", "b"}, fetching) is None
        if end == "held":
            holdings.set_held("a", frozenset({"b1"}))
        elif end == "ended":
            del fetching["b1"]
        else:
            state.started["a"] = time.monotonic() - planner.CLAIM_ACCEPT_S - 1
        assert planner._wait_reason("b", state, {"a", "b"}, fetching) is None
    # "old" holds the only copy of x, which "new" is placed to hold: "old" waits on "new".
    holdings = Holdings(
        {"old": frozenset(), "new": frozenset({"x"})},
        {"old": frozenset({"x"}), "new": frozenset()},
    )
    state = push(holdings)
    assert planner._wait_reason("old", state, {"old", "new"}, {}) == Wait("new", "x", False)
    assert planner._wait_reason("old", state, {"old"}, {}) is None  # "new" left the round
