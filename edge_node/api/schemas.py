"""Request bodies of the edge node (pydantic only at the boundary; converted to domain objects in
routes). The plan is a wire message shared with the controller: :class:`core.wire.EdgePlan`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.wire import EdgePlan

#: The plan body (the same model the controller's planner builds).
PlanRequest = EdgePlan


class BatchRequest(BaseModel):
    block_ids: list[str] = Field(max_length=100_000)
    #: The model the blocks belong to: an on-demand node (``EDGE_CACHE_POLICY``) pulls the
    #: blocks it lacks through and caches the model; a node running its agent
    #: (``EDGE_AGENT_CHECKPOINT``) pulls them through and counts the request as demand; other
    #: nodes ignore it.
    model_id: str | None = Field(default=None, max_length=128)
    #: Request-time migration: blocks this node lacks are pulled from peer edges (the origin
    #: only for ``via_origin`` blocks) while the answer streams (edge_node.migrate); needs
    #: ``model_id``.
    migrate: bool = False
    #: Per block, the peer URL the client's route names to migrate it from (tried first when
    #: the controller's route lists it as a holder; any other URL is ignored).
    migrate_from: dict[str, str] = Field(default_factory=dict, max_length=100_000)
    #: With ``migrate``: blocks the client's route says this node delivers from the origin
    #: (the delay model's cloud path): those it lacks are pulled from the origin over the
    #: backhaul, not from peers.
    via_origin: list[str] = Field(default_factory=list, max_length=100_000)


class AgentSwitch(BaseModel):
    """``PUT /v1/agent``: ``enabled`` false hands the node back to the controller's plans;
    ``frozen`` true keeps the node's cache as it is (the agent observes demand but applies no
    plan) until ``frozen`` false; left out: unchanged."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool
    frozen: bool | None = None
