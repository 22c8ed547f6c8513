"""Pushes run concurrently and are followed by their progress: ``POST /v1/placement:plan``
answers once pushes are dispatched, a hung edge does not hold the others, and a push whose
transfer stalls is given up after ``push_stall_s`` and retried with backoff (real edges, real
Redis, a real origin behind a stalling middleware)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from tests.controller.conftest import AUTH, MINI_MODELS, ORIGIN_TOKEN, controller_settings
from tests.faults import StallBodies
from tests.helpers import live_server, wait_until


def register(client: TestClient, node_id: str, url: str, **extra: Any) -> None:
    body = {"url": url, "capacity_bytes": None, "position": [0, 0], **extra}
    assert client.put(f"/v1/nodes/{node_id}", json=body).status_code == 200


def add_models(client: TestClient, models: tuple[str, ...] = MINI_MODELS) -> None:
    for model_id in models:
        body = {"model_id": model_id, "repo_id": f"mini/{model_id}"}
        assert client.post("/v1/models", json=body).status_code == 201


def push_of(client: TestClient, node_id: str) -> dict[str, Any]:
    status: dict[str, Any] = client.get("/v1/placement").json()["push"][node_id]
    return status


@pytest.fixture
def hung_edge() -> Iterator[socket.socket]:
    """A listening socket that accepts TCP connections (kernel backlog) and never answers;
    closing it resets the connections still waiting (pushes to it end)."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    try:
        yield hung
    finally:
        hung.close()


def test_plan_answers_while_a_hung_edges_push_is_pending_and_the_others_apply(
    redis_url: str, mini_origin: str, edges: Any, hung_edge: socket.socket
) -> None:
    # The stall bounds are long: the hung edge's push must still be in flight at the end.
    settings = controller_settings(
        redis_url, mini_origin, push_stall_s=600, push_accept_timeout_s=600, push_workers=4
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        add_models(client)
        # Far apart: each node serves its own area, so each is placed models of its own.
        urls = {"edge-1": edges("edge-1", None), "edge-2": edges("edge-2", None)}
        for x_m, (node_id, url) in zip((5000, 10000), urls.items(), strict=True):
            register(client, node_id, url, position=[x_m, 0])
        hung_url = f"http://127.0.0.1:{hung_edge.getsockname()[1]}"
        register(client, "edge-0", hung_url)  # first in the order of node ids
        r = client.post("/v1/placement:plan")
        assert r.status_code == 200, r.text
        answered = r.json()
        assert set(answered["push"]) == {"edge-0", "edge-1", "edge-2"}
        assert {p["status"] for p in answered["push"].values()} <= {"pending", "pushing"}
        assert answered["dispatch"]["state"] == "running"
        version = answered["version"]

        def others_applied() -> dict[str, Any] | None:
            placement: dict[str, Any] = client.get("/v1/placement").json()
            push = placement["push"]
            done = all(push[n]["status"] == "applied" for n in urls)
            return placement if done else None

        placement = wait_until(others_applied, timeout_s=120, what="edge-1 and edge-2 applied")
        assert placement["version"] == version
        assert placement["push"]["edge-0"]["status"] == "pushing"
        assert placement["dispatch"]["state"] == "running"
        for node_id, url in urls.items():
            held = {m["model_id"] for m in httpx.get(f"{url}/v1/models").json()["models"]}
            assert held == set(placement["servers"][node_id]["models"]) != set()
            assert httpx.get(f"{url}/v1/plan").json()["version"] == version
        hung_edge.close()  # the hung push ends (connection reset): the round finishes
        planner = client.app.state.planner  # type: ignore[attr-defined]
        assert planner.wait_rounds(timeout_s=60)
        assert push_of(client, "edge-0")["status"] == "unreachable"


def test_a_stalled_transfer_is_given_up_and_retried_with_backoff(
    redis_url: str, mini_zoo: Path, tmp_path: Path
) -> None:
    from edge_node.app import create_app as create_edge
    from edge_node.settings import Settings as EdgeSettings
    from testbed.origin import create_app as create_origin
    from tests.controller.conftest import TOKEN

    stall = StallBodies(create_origin(mini_zoo, auth_token=ORIGIN_TOKEN), paths="/resolve/")
    with live_server(stall) as origin:
        edge_settings = EdgeSettings(
            node_id="edge-1",
            data_dir=tmp_path / "edge-1",
            auth_token=TOKEN,
            origin_url=origin,
            allowed_hosts="127.0.0.1",
            durable=False,
            scrub_on_start=False,
        )
        settings = controller_settings(
            redis_url, origin, push_stall_s=1.5, retry_interval_s=10.0, push_retry_budget=4
        )
        with (
            live_server(create_edge(edge_settings)) as edge_url,
            TestClient(create_app(settings), headers=AUTH) as client,
        ):
            stall.stalled.clear()  # indexing reads the files through the origin too
            add_models(client, ("tiny-a",))
            stall.stalled.set()
            register(client, "edge-1", edge_url)
            planner = client.app.state.planner  # type: ignore[attr-defined]
            client.post("/v1/placement:plan").raise_for_status()
            assert planner.wait_rounds(timeout_s=120)
            first = push_of(client, "edge-1")
            # Given up on progress, not on the total timeout (600 s by default).
            assert first["status"] == "stalled" and first["code"] == "push_stalled"
            assert "no progress" in first["error"] and first["attempts"] == 1
            assert stall.stalls >= 1
            # The edge was really transferring: the PUT was accepted and the plan is running.
            edge_plan = httpx.get(f"{edge_url}/v1/plan").json()
            assert edge_plan["state"] in ("queued", "running")
            assert edge_plan["plan_id"] == first["plan_id"]
            # Backoff: the retry is due half to one full retry interval later.
            assert 5.0 <= first["retry_at"] - first["at"] <= 10.0
            assert planner.tick(now_s=first["at"] + 4.9) is None  # not due yet
            assert planner.tick(now_s=first["retry_at"]) == "repush"
            assert planner.wait_rounds(timeout_s=120)
            second = push_of(client, "edge-1")
            assert second["status"] == "stalled" and second["attempts"] == 2
            assert 10.0 <= second["retry_at"] - second["at"] <= 20.0  # doubled
            # The origin recovers: the next retry applies (superseding the stalled plan).
            stall.stalled.clear()
            assert planner.tick(now_s=second["retry_at"]) == "repush"
            assert planner.wait_rounds(timeout_s=120)
            third = push_of(client, "edge-1")
            assert third["status"] == "applied", third
            assert third["held_models"] == ["tiny-a"]
            assert httpx.get(f"{edge_url}/v1/plan").json()["version"] == third["version"]
            assert time.time() >= third["at"]
