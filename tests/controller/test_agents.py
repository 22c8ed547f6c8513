"""The controller taking decentralised nodes over and handing them back (``/v1/agents``,
controller/agents.py, ``trimcache agents``).

Real services on OS-assigned ports: redis-server, the mini origin, the controller and edge
nodes, one of them running a ``marl`` checkpoint trained here in seconds (``EDGE_AGENT_CHECKPOINT``;
no demand reaches it, so the agent decides nothing by itself: every change comes from the
hand-over). The scenario: the controller plans nothing for the agent node; ``takeover`` switches
its agent off, plans it at once and the edge applies the plan; ``release`` resumes the agent and
the placement drops the node. Then the bad inputs: 401, 404 ``node_not_found``, 422, and the
per-node outcomes ``not_agent`` and ``unreachable``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.app import create_app
from controller.delay import marl
from controller.delay.scenario import tiny_problem
from core.wire import AgentOutcome
from testbed.cli import main as trimcache
from tests.controller.conftest import AUTH, TOKEN, controller_settings
from tests.helpers import live_server, serve, wait_pushed, wait_until

AGENT_NODE = "s0"  # a node of the checkpoint's problem (tiny_problem: s0, s1)
FAST = marl.MarlConfig(episodes=4, eval_every=4, batch=16, hidden=16, mixing_embed=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = marl.train(tiny_problem(seed=3, n_servers=2), seed=1, config=FAST)
    path = tmp_path_factory.mktemp("agent") / "agent.pt"
    marl.save_checkpoint(trained, path)
    return path


@pytest.fixture
def controller(redis_url: str, mini_origin: str) -> Iterator[httpx.Client]:
    """A live controller with ``tiny-a`` in its catalogue; a client carrying its token."""
    settings = controller_settings(
        redis_url, mini_origin, push_stall_s=5.0, push_accept_timeout_s=2.0
    )
    with (
        live_server(create_app(settings)) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=60) as client,
    ):
        added = client.post("/v1/models", json={"model_id": "tiny-a", "repo_id": "mini/tiny-a"})
        assert added.status_code == 201, added.text
        yield client


EdgeMaker = Callable[..., str]


def edge_app(
    node_id: str, url: str, data_dir: Path, *, origin: str, controller: str, checkpoint: Path | None
) -> Any:
    """An edge app heartbeating to ``controller``, with the agent of ``checkpoint`` or none."""
    from edge_node.app import create_app as create_edge
    from edge_node.settings import Settings as EdgeSettings

    return create_edge(
        EdgeSettings(
            node_id=node_id,
            data_dir=data_dir,
            capacity_bytes=10**8,
            auth_token=TOKEN,
            origin_url=origin,
            controller_url=controller,
            public_url=url,
            heartbeat_interval_s=0.2,
            agent_checkpoint=checkpoint,
            agent_interval_s=0.5,
            allowed_hosts="127.0.0.1",
            durable=False,
            scrub_on_start=False,
        )
    )


@pytest.fixture
def edge(
    tmp_path: Path, mini_origin: str, controller: httpx.Client, checkpoint: Path
) -> Iterator[EdgeMaker]:
    """``make(node_id, agent=True) -> url``: a live edge heartbeating to the controller, with
    the checkpoint (``agent``) or without; stopped after the test."""
    with ExitStack() as stack:

        def make(node_id: str, *, agent: bool = True) -> str:
            def build(url: str) -> Any:
                return edge_app(
                    node_id, url, tmp_path / node_id, origin=mini_origin,
                    controller=str(controller.base_url).rstrip("/"),
                    checkpoint=checkpoint if agent else None,
                )  # fmt: skip

            url: str = stack.enter_context(serve(build))
            return url

        yield make


def node(client: httpx.Client, node_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/nodes/{node_id}")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def registered(client: httpx.Client, node_id: str) -> bool:
    return client.get(f"/v1/nodes/{node_id}").status_code == 200


def test_takeover_plans_the_agent_node_and_release_resumes_its_agent(
    controller: httpx.Client, edge: EdgeMaker
) -> None:
    url = edge(AGENT_NODE)
    plain_url = edge("plain", agent=False)
    wait_until(lambda: registered(controller, AGENT_NODE) and registered(controller, "plain"))
    assert node(controller, AGENT_NODE)["cache_policy"] == "marl"
    first = controller.post("/v1/placement:plan").json()
    assert set(wait_pushed(controller, first["version"])["servers"]) == {"plain"}

    [row] = controller.get("/v1/agents").json()["nodes"]
    assert row["node_id"] == AGENT_NODE and row["url"] == url
    assert row["cache_policy"] == "marl" and row["taken_over"] is False
    assert row["agent"]["enabled"] is True and row["error"] is None

    # Takeover (no body: every node announcing marl): the agent stops, the node is planned.
    taken = controller.post("/v1/agents:takeover")
    assert taken.status_code == 200, taken.text
    doc = taken.json()
    assert doc["action"] == "takeover"
    [outcome] = doc["nodes"]
    assert AgentOutcome.model_validate(outcome).model_dump() == outcome  # the wire model
    assert outcome["node_id"] == AGENT_NODE and outcome["outcome"] == "taken"
    assert outcome["agent"]["enabled"] is False and outcome["planned"] is True
    placement = doc["placement"]
    assert set(placement["servers"]) == {AGENT_NODE, "plain"}
    assert placement["version"] > first["version"]
    assert node(controller, AGENT_NODE)["cache_policy"] is None  # before any new heartbeat
    pushed = wait_pushed(controller, placement["version"])
    assert pushed["push"][AGENT_NODE]["status"] == "applied", pushed["push"]
    plan = httpx.get(f"{url}/v1/plan", timeout=10).json()
    assert plan["state"] == "applied" and plan["version"] == placement["version"]
    assert sorted(plan["held_models"]) == placement["servers"][AGENT_NODE]["models"]
    assert httpx.get(f"{url}/v1/agent", timeout=10).json()["enabled"] is False
    # The edge's own heartbeats agree, and keep the node taken over.
    wait_until(lambda: node(controller, AGENT_NODE)["plan_version"] == placement["version"])
    assert node(controller, AGENT_NODE)["cache_policy"] is None
    [row] = controller.get("/v1/agents").json()["nodes"]
    assert row["taken_over"] is True and row["cache_policy"] is None
    assert row["agent"]["enabled"] is False

    # Release (no body: every node taken over): the agent decides again, the placement drops it.
    released = controller.post("/v1/agents:release")
    assert released.status_code == 200, released.text
    doc = released.json()
    [outcome] = doc["nodes"]
    assert outcome["outcome"] == "released" and outcome["planned"] is False
    assert set(doc["placement"]["servers"]) == {"plain"}
    assert node(controller, AGENT_NODE)["cache_policy"] == "marl"
    assert httpx.get(f"{url}/v1/agent", timeout=10).json()["enabled"] is True
    refused = httpx.put(f"{url}/v1/plan", json={}, headers=AUTH, timeout=10)
    assert refused.status_code in (400, 422)  # the agent's node takes no plans again
    [row] = controller.get("/v1/agents").json()["nodes"]
    assert row["taken_over"] is False and row["agent"]["enabled"] is True
    # Nothing left to release; the plain node's agent-less answer is a per-node outcome.
    again = controller.post("/v1/agents:release").json()
    assert again == {"action": "release", "nodes": [], "placement": None}
    plain = controller.post("/v1/agents:takeover", json={"node_ids": ["plain"]}).json()
    [outcome] = plain["nodes"]
    assert outcome["outcome"] == "not_agent" and outcome["http_status"] == 404
    assert outcome["url"] == plain_url and plain["placement"] is None


def test_bad_requests_are_clear_4xx(controller: httpx.Client) -> None:
    def assert_error(response: httpx.Response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["X-Error-Code"] == code
        assert response.json()["error"]["code"] == code

    for action in ("takeover", "release"):
        path = f"/v1/agents:{action}"
        no_token = httpx.post(f"{controller.base_url}{path}", timeout=10)
        assert_error(no_token, 401, "unauthorized")
        assert_error(controller.post(path, json={"node_ids": ["nope"]}), 404, "node_not_found")
        bodies: list[dict[str, Any]] = [
            {"node_ids": []},
            {"node_ids": ["a", "a"]},
            {"node_ids": ["../x"]},
            {"node_ids": "s0"},
            {"nodes": ["s0"]},
        ]
        for body in bodies:
            assert controller.post(path, json=body).status_code == 422, body
    # A node that announces marl but does not answer: per node "unreachable", nothing planned.
    beat = {"url": "http://127.0.0.1:9", "capacity_bytes": 10**6, "cache_policy": "marl"}
    assert controller.put("/v1/nodes/ghost", json=beat).status_code == 200
    doc = controller.post("/v1/agents:takeover", json={"node_ids": ["ghost"]}).json()
    [outcome] = doc["nodes"]
    assert outcome["outcome"] == "unreachable" and outcome["code"] == "upstream_unavailable"
    assert doc["placement"] is None
    assert node(controller, "ghost")["cache_policy"] == "marl"  # unchanged
    [row] = controller.get("/v1/agents").json()["nodes"]
    assert row["node_id"] == "ghost" and row["agent"] is None
    assert row["error"].startswith("unreachable")


def test_cli_lines_and_exit_codes(
    controller: httpx.Client, edge: EdgeMaker, monkeypatch, capsys
) -> None:
    edge(AGENT_NODE)
    wait_until(lambda: registered(controller, AGENT_NODE))
    beat = {"url": "http://127.0.0.1:9", "capacity_bytes": 10**6, "cache_policy": "marl"}
    assert controller.put("/v1/nodes/ghost", json=beat).status_code == 200
    base = ["--controller", str(controller.base_url).rstrip("/")]
    monkeypatch.setenv("TRIMCACHE_AUTH_TOKEN", TOKEN)

    assert trimcache(["agents", "ls", *base]) == 0
    out = capsys.readouterr()
    rows = {line.split()[0]: line for line in out.out.splitlines()[1:] if line[:1] != " "}
    assert set(rows) == {AGENT_NODE, "ghost"} and " on " in rows[AGENT_NODE]
    assert "2 agent node(s)" in out.err

    # One node switched, one unreachable: a line each, then one error line and exit 1.
    assert trimcache(["agents", "takeover", *base]) == 1
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert f"{AGENT_NODE}: taken, in the new placement" in lines
    assert any(line.startswith("ghost: unreachable (upstream_unavailable") for line in lines)
    assert any(line.startswith("placement v") for line in lines)
    [error] = out.err.splitlines()
    assert error == "trimcache: error: 1 of 2 node(s) not taken: ghost unreachable"

    assert trimcache(["agents", "release", "--node", AGENT_NODE, *base]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == f"{AGENT_NODE}: released" and out.err == ""

    # Bad input: one line from the controller's error, exit 1, nothing on stdout.
    assert trimcache(["agents", "takeover", "--node", "nope", *base]) == 1
    out = capsys.readouterr()
    [error] = out.err.splitlines()
    assert "404" in error and "node_not_found" in error and out.out == ""


def test_a_node_handed_back_stays_handed_back_across_a_restart(
    controller: httpx.Client, checkpoint: Path, mini_origin: str, tmp_path: Path
) -> None:
    def build(url: str) -> Any:
        return edge_app(
            AGENT_NODE, url, tmp_path / AGENT_NODE, origin=mini_origin,
            controller=str(controller.base_url).rstrip("/"), checkpoint=checkpoint,
        )  # fmt: skip

    with serve(build) as url:
        wait_until(lambda: registered(controller, AGENT_NODE))
        assert node(controller, AGENT_NODE)["cache_policy"] == "marl"
        off = httpx.put(f"{url}/v1/agent", json={"enabled": False}, headers=AUTH, timeout=10)
        assert off.status_code == 200 and off.json()["enabled"] is False
        wait_until(lambda: node(controller, AGENT_NODE)["cache_policy"] is None)
    with serve(build) as url:  # the same data dir: the switch was kept
        assert httpx.get(f"{url}/v1/agent", timeout=10).json()["enabled"] is False
        wait_until(lambda: node(controller, AGENT_NODE)["url"] == url)
        assert node(controller, AGENT_NODE)["cache_policy"] is None
        on = httpx.put(f"{url}/v1/agent", json={"enabled": True}, headers=AUTH, timeout=10)
        assert on.status_code == 200
    with serve(build) as url:
        assert httpx.get(f"{url}/v1/agent", timeout=10).json()["enabled"] is True
        wait_until(lambda: node(controller, AGENT_NODE)["url"] == url)
        assert node(controller, AGENT_NODE)["cache_policy"] == "marl"
