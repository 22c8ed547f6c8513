"""``/v1/agent``: the decentralised agent's state, and handing the node to the controller and
back (edge_node.agent). A node without ``EDGE_AGENT_CHECKPOINT`` answers 404 ``not_found``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from edge_node.agent import EdgeAgent
from edge_node.api.deps import AgentDep, AuthDep
from edge_node.api.schemas import AgentSwitch

router = APIRouter(tags=["agent"])


def _agent(agent: EdgeAgent | None) -> EdgeAgent:
    if agent is None:
        raise HTTPException(404, "this node runs no agent (EDGE_AGENT_CHECKPOINT is unset)")
    return agent


@router.get("/v1/agent")
def get_agent(agent: AgentDep) -> dict[str, Any]:
    return _agent(agent).to_dict()


@router.put("/v1/agent", dependencies=[AuthDep])
def put_agent(body: AgentSwitch, agent: AgentDep) -> dict[str, Any]:
    """``enabled: false``: the agent stops deciding and the controller plans the node again;
    ``true``: the agent decides again (and plans are refused). ``frozen``: see AgentSwitch."""
    found = _agent(agent)
    if body.frozen is not None:
        found.set_frozen(body.frozen)
    found.set_enabled(body.enabled)
    return found.to_dict()
