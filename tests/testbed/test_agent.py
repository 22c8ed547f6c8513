"""Decentralised mode on the real test-profile testbed (``testbed up --agent-checkpoint``).

One testbed (Redis, origin, controller, one edge with room for one model of the test zoo,
emulating the default world's radio) whose edge runs a ``marl`` checkpoint trained here
(seeded, seconds: testbed/agent.py on the zoo's manifests, one instance per hot model). Real
SDK fetches into fresh device caches:

- the controller plans nothing for the edge (it announces ``cache_policy: marl``) and routes
  clients near it to it;
- after clients ask for one model, the agent caches it without any controller plan, within its
  capacity, and routes name the edge for it (the origin's counter stays still on a new fetch);
- frozen (``PUT /v1/agent {"frozen": true}``), it decides on shifted demand but keeps its cache;
- when demand shifts to another model, the agent evicts the first and caches the second;
- ``PUT /v1/agent {"enabled": false}`` hands the node back: the controller plans it again;
- ``trimcache agents release|takeover`` (``POST /v1/agents:release|takeover``) do the same from
  the controller's side: the agent resumes and the placement drops the node, then the node is
  taken over and planned again at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import Client
from testbed import launcher
from testbed.agent import single_edge_problem, train_checkpoint, zoo_manifests
from testbed.topology import grid_topology
from tests.helpers import run_cli, wait_until

FIRST, SECOND = "minilm-base", "bert-question"
MIB = 1024 * 1024
CAPACITY = 100 * MIB


pytestmark = pytest.mark.slow


@pytest.fixture
def agent_testbed(tmp_path: Path, zoo_dir: Path) -> Iterator[dict[str, Any]]:
    layout = grid_topology(1)
    [edge] = layout.edges
    checkpoint = tmp_path / "agent.pt"
    train_checkpoint(
        checkpoint,
        manifests=zoo_manifests(zoo_dir),
        problem_for=single_edge_problem(
            node_id=edge.node_id,
            capacity_bytes=CAPACITY,
            position=edge.position,
            area_positions={a.area_id: a.position for a in layout.areas},
        ),
        areas=[layout.area_near(edge.node_id).area_id],
        seed=0,
    )
    state_dir = tmp_path / "tb"
    state = launcher.up(
        launcher.LaunchOptions(
            state_dir=state_dir, edges=1, zoo_dir=zoo_dir, capacity_bytes=CAPACITY,
            profile="test", agent_checkpoint=checkpoint, agent_interval_s=0.5,
            controller_port=0, timeout_s=120, world="default",
        )
    )  # fmt: skip
    try:
        yield state
    finally:
        launcher.down(state_dir)


def _json(url: str) -> Any:
    return httpx.get(url, timeout=10).raise_for_status().json()


def test_agent_edge_adapts_to_demand_without_a_plan(
    agent_testbed: dict[str, Any], tmp_path: Path
) -> None:
    state = agent_testbed
    controller, origin = state["controller_url"], state["origin_url"]
    [edge] = state["edges"]
    edge_url, area = edge["url"], edge["area_id"]
    [node] = _json(f"{controller}/v1/nodes")["nodes"]
    assert node["cache_policy"] == "marl"
    assert _json(f"{controller}/v1/placement")["servers"] == {}  # nothing planned for it
    runs = iter(range(100))

    def fetch(model_id: str) -> dict[str, Any]:
        with Client(
            controller_url=controller, cache_dir=tmp_path / f"dev-{next(runs)}", area_id=area
        ) as client:
            report: dict[str, Any] = client.fetch(model_id, load=False).report
        return report

    def agent() -> dict[str, Any]:
        doc: dict[str, Any] = _json(f"{edge_url}/v1/agent")
        return doc

    # 1. Clients near the edge ask for FIRST: the edge serves them (pull-through) and counts it.
    for _ in range(2):
        report = fetch(FIRST)
        assert report["bytes_by_kind"]["edge"] > 0
    assert agent()["demand"] == {FIRST: 1.0}
    # Pulled through, the blocks still go out on the edge's radio as whole blocks (a broadcast
    # edge groups them with other requests), not as unicast bytes.
    radio = _json(f"{edge_url}/v1/stats")["radio"]
    assert radio["block_requests"] > 0
    assert radio["airtime_by_kind_s"]["bytes"] < 0.01 * radio["airtime_by_kind_s"]["block"], radio

    def holds(model_id: str) -> bool:  # held, and the agent's local plan is done
        doc = agent()
        return model_id in doc["held_models"] and doc["applied"] >= 1

    wait_until(lambda: holds(FIRST), timeout_s=60)
    doc = agent()
    assert doc["last_error"] is None
    assert SECOND not in doc["held_models"]
    stats = _json(f"{edge_url}/v1/stats")
    assert stats["physical_bytes"] <= CAPACITY
    plan = _json(f"{edge_url}/v1/plan")
    assert plan["plan_id"] == doc["last_plan_id"]  # the agent's own plan, not the controller's
    assert _json(f"{controller}/v1/placement")["servers"] == {}

    # The controller indexes what the agent holds and routes clients to it.
    def routed(model_id: str) -> bool:
        [n] = _json(f"{controller}/v1/nodes")["nodes"]
        return model_id in n["models"]

    wait_until(lambda: routed(FIRST), timeout_s=30)
    before = _json(f"{origin}/v1/stats")["bytes_served"]
    report = fetch(FIRST)
    assert report["bytes_by_kind"]["edge"] == report["block_bytes"]
    assert report["bytes_pulled_by_edges"] == {}
    assert _json(f"{origin}/v1/stats")["bytes_served"] == before

    # 2. Frozen, the agent decides on the shifted demand but keeps the cache as it is.
    token = {"Authorization": f"Bearer {state['auth_token']}"}

    def put_agent(body: dict[str, Any]) -> dict[str, Any]:
        reply = httpx.put(f"{edge_url}/v1/agent", json=body, headers=token, timeout=10)
        assert reply.status_code == 200, reply.text
        doc: dict[str, Any] = reply.json()
        return doc

    assert put_agent({"enabled": True, "frozen": True})["frozen"] is True
    applied = agent()["applied"]
    for _ in range(12):
        fetch(SECOND)
        try:
            wait_until(lambda: SECOND in agent()["wanted_models"], timeout_s=5)
            break
        except TimeoutError:
            continue
    doc = agent()
    assert SECOND in doc["wanted_models"], doc  # decided ...
    assert doc["applied"] == applied and FIRST in doc["held_models"]  # ... not applied
    assert SECOND not in doc["held_models"]
    assert put_agent({"enabled": True, "frozen": False})["frozen"] is False

    # 3. Thawed: demand has shifted to SECOND; the agent evicts FIRST (one model fits) and
    # caches SECOND.
    for _ in range(12):
        fetch(SECOND)
        try:
            wait_until(lambda: holds(SECOND), timeout_s=5)
            break
        except TimeoutError:
            continue
    doc = agent()
    assert SECOND in doc["held_models"], doc
    assert doc["demand"][SECOND] > doc["demand"].get(FIRST, 0.0)
    assert FIRST not in doc["held_models"]
    assert _json(f"{edge_url}/v1/stats")["physical_bytes"] <= CAPACITY
    wait_until(lambda: routed(SECOND) and not routed(FIRST), timeout_s=30)
    route = _json(f"{controller}/v1/routes/{SECOND}?area_id={area}")
    first_source = route["sources"][route["blocks"][next(iter(route["blocks"]))][0]]
    assert first_source.get("node_id") == edge["node_id"]
    assert _json(f"{controller}/v1/placement")["servers"] == {}

    # 4. Take over: the edge is handed back and the controller plans it again.
    refused = httpx.put(f"{edge_url}/v1/plan", json={}, headers=token, timeout=10)
    assert refused.status_code in (400, 422)
    reply = httpx.put(f"{edge_url}/v1/agent", json={"enabled": False}, headers=token, timeout=10)
    assert reply.status_code == 200 and reply.json()["enabled"] is False
    wait_until(lambda: _json(f"{controller}/v1/nodes")["nodes"][0]["cache_policy"] is None)
    httpx.post(f"{controller}/v1/placement:plan", headers=token, timeout=60).raise_for_status()
    wait_until(
        lambda: edge["node_id"] in _json(f"{controller}/v1/placement")["servers"], timeout_s=60
    )

    # 4. From the controller's side (``trimcache agents``, the operator's commands): release
    # resumes the agent and the placement drops the node; takeover plans it again at once.
    tb = ["--dir", str(tmp_path / "tb")]
    released = run_cli("agents", "release", "--node", edge["node_id"], *tb, timeout_s=120)
    assert released.returncode == 0, released.stderr
    assert released.stdout.splitlines()[0] == f"{edge['node_id']}: released"
    assert agent()["enabled"] is True
    assert _json(f"{controller}/v1/nodes")["nodes"][0]["cache_policy"] == "marl"
    assert edge["node_id"] not in _json(f"{controller}/v1/placement")["servers"]
    listed = run_cli("agents", "ls", *tb, timeout_s=120)
    assert listed.returncode == 0 and " on " in listed.stdout.splitlines()[1], listed.stdout
    taken = run_cli("agents", "takeover", *tb, timeout_s=120)
    assert taken.returncode == 0, taken.stderr
    assert f"{edge['node_id']}: taken, in the new placement" in taken.stdout.splitlines()
    assert agent()["enabled"] is False
    assert edge["node_id"] in _json(f"{controller}/v1/placement")["servers"]
