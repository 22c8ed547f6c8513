"""Every wire message of core.wire, round-tripped with the JSON the real other side produces.

Real parts only: the controller app on real Redis and the real origin, real edge node apps on
uvicorn; each message is taken from what one side actually sent or answered, parsed with its
pydantic model, and fed to the other side.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from client._route import parse_route
from controller.app import create_app
from controller.settings import Settings
from core.errors import ErrorCode
from core.wire import (
    EdgePlan,
    ErrorBody,
    NodeHeartbeat,
    NodeRegistered,
    PlanAccepted,
    PlanStatus,
    RouteSource,
)
from edge_node.heartbeat import heartbeat_body
from tests.controller.conftest import MINI_MODELS
from tests.helpers import apply_plan, live_server, plan_and_wait

TOKEN = "wire-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def controller(redis_url: str, mini_origin: str) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, origin_url=mini_origin, auth_token=TOKEN, auto_plan=False
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        model_id = MINI_MODELS[0]
        r = client.post("/v1/models", json={"model_id": model_id, "repo_id": f"mini/{model_id}"})
        assert r.status_code == 201, r.text
        yield client


def test_every_wire_message_round_trips(
    controller: TestClient, tmp_path: Path, mini_origin: str
) -> None:
    from edge_node.app import create_app as create_edge
    from edge_node.settings import Settings as EdgeSettings

    model_id = MINI_MODELS[0]
    edge = create_edge(
        EdgeSettings(
            node_id="edge-w",
            data_dir=tmp_path / "edge-w",
            auth_token=TOKEN,
            origin_url=mini_origin,
            durable=False,
            scrub_on_start=False,
        )
    )
    with live_server(edge) as edge_url:
        # Heartbeat: what the edge builds, parsed by the model, accepted by the controller.
        sent = heartbeat_body(edge.state.node)
        beat = NodeHeartbeat.model_validate(sent)
        assert beat.model_dump(mode="json") == sent
        sent["url"] = edge_url
        r = controller.put("/v1/nodes/edge-w", json=sent)
        assert r.status_code == 200, r.text
        registered = NodeRegistered.model_validate_json(r.content)
        assert registered.node_id == "edge-w" and registered.registered
        assert controller.get("/v1/nodes/edge-w").json()["url"] == edge_url

        # Plan: the controller's planner builds it and the real edge applies it.
        placement = plan_and_wait(controller)
        push = placement["push"]["edge-w"]
        assert push["status"] == "applied", push
        assert push["held_models"] == [model_id]

        # Plan status: what the edge reports, as the planner parses it.
        status = PlanStatus.model_validate_json(httpx.get(f"{edge_url}/v1/plan").content)
        assert status.status == "applied" and status.version == placement["version"]

        # A plan built with the model is one the edge accepts (a re-apply: fetches nothing).
        manifest = controller.get(f"/v1/models/{model_id}").json()["manifest"]
        plan = EdgePlan(version=placement["version"], manifests=[manifest])
        again = apply_plan(edge_url, plan.to_json(), headers=AUTH)
        assert again.response.status_code == 202, again.response.text
        accepted = PlanAccepted.model_validate_json(again.response.content)
        assert accepted.version == placement["version"]
        assert again.applied and again.result["fetched_bytes_by_source"] == {}
        assert PlanStatus.model_validate(again.result).plan_id == accepted.plan_id

        # Route: the controller's answer parses with the model and with the client's parser.
        beat2 = heartbeat_body(edge.state.node)
        beat2["url"] = edge_url
        assert controller.put("/v1/nodes/edge-w", json=beat2).status_code == 200
        doc = controller.get(f"/v1/routes/{model_id}").json()
        sources = [RouteSource.model_validate(s) for s in doc["sources"]]
        assert [s.kind for s in sources] == ["edge", "origin"]
        assert sources[0].node_id == "edge-w" and sources[0].url == edge_url
        route = parse_route(doc)
        assert route.sources[0].url == edge_url and route.sources[-1].kind == "origin"

        # Error bodies of both services, with one spelling of each code.
        for response in (
            controller.get("/v1/nodes/nobody"),
            httpx.get(f"{edge_url}/v1/models/nothing/manifest"),
            httpx.put(f"{edge_url}/v1/plan", json=plan.to_json()),
        ):
            body = ErrorBody.model_validate_json(response.content)
            assert ErrorCode(body.error.code).value == response.headers["X-Error-Code"]
            assert body.error.message
        stale = EdgePlan(version=placement["version"] - 1, manifests=[manifest])
        refused = httpx.put(f"{edge_url}/v1/plan", json=stale.to_json(), headers=AUTH)
        assert refused.status_code == 409
        assert ErrorBody.model_validate_json(refused.content).error.code == ErrorCode.stale_plan


def test_a_plan_encoded_from_manifest_texts_is_the_plan_document() -> None:
    """EdgePlan.encode (one manifest encoding per push round) == EdgePlan(...).to_json()."""
    import json

    from core.manifest import ModelManifest

    manifests = [ModelManifest(f"m{i}", f"o/m{i}", "a" * 40, ()) for i in range(2)]
    peers = {"b" * 64: ["http://edge-2:1", "http://é:2"]}
    for origin in (None, "http://origin:1"):
        body = EdgePlan.encode(7, [m.to_json() for m in manifests], peers, origin)
        plan = EdgePlan(
            version=7, manifests=[m.to_dict() for m in manifests], peers=peers, origin_url=origin
        )
        assert json.loads(body) == plan.to_json()
        assert EdgePlan.model_validate_json(body) == plan
