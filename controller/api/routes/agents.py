"""Decentralised nodes (``/v1/agents``): list their agents, take them over, release them.

``POST /v1/agents:takeover`` / ``POST /v1/agents:release`` (auth) switch the nodes' agents off /
on through each edge's ``PUT /v1/agent`` and plan at once (:mod:`controller.agents`); they answer
per node what happened and the placement that plan stored. ``GET /v1/agents`` asks every agent
node for its ``GET /v1/agent`` document.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller import agents
from controller.api.deps import AuthDep, PlannerDep, SettingsDep
from controller.api.routes.placement import placement_view
from core.wire import AgentHandover

router = APIRouter(tags=["agents"])


def _answer(action: str, done: agents.Switched, solver: str) -> dict[str, Any]:
    placement = None if done.placement is None else placement_view(done.placement, solver)
    return {
        "action": action,
        "nodes": [o.model_dump() for o in done.outcomes],
        "placement": placement,
    }


@router.get("/v1/agents")
def list_agents(planner: PlannerDep) -> dict[str, Any]:
    return {"nodes": agents.list_agents(planner)}


@router.post("/v1/agents:takeover", dependencies=[AuthDep])
def takeover(
    planner: PlannerDep, settings: SettingsDep, body: AgentHandover | None = None
) -> dict[str, Any]:
    """The agents stop deciding; the controller plans the nodes again."""
    node_ids = None if body is None else body.node_ids
    done = agents.switch(planner, node_ids, enabled=False)
    return _answer("takeover", done, settings.planning_solver)


@router.post("/v1/agents:release", dependencies=[AuthDep])
def release(
    planner: PlannerDep, settings: SettingsDep, body: AgentHandover | None = None
) -> dict[str, Any]:
    """The agents decide again; the controller plans the rest without them."""
    node_ids = None if body is None else body.node_ids
    done = agents.switch(planner, node_ids, enabled=True)
    return _answer("release", done, settings.planning_solver)
