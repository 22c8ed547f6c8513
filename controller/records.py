"""Typed placement records: what the planner stores in Redis as the current placement.

:class:`PlacementRecord` is built by :meth:`controller.planner.Planner.plan` and stored with
:meth:`controller.state.RedisState.save_placement`; readers of ``GET /v1/placement`` get its
JSON. ``push[node_id]`` is a :class:`PushStatus` per placed node, updated one node at a time
(``update_push_status``, fenced by the version) while the push round runs; ``dispatch`` says
whether that round is still running. Fields other modules add later (unknown here) survive a
round trip (``extra="allow"``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: ``pending``: waiting in the round (for a peer's copy, or for a free push worker);
#: ``pushing``: sent, the edge is applying it; the rest are outcomes (``retained``: applied
#: while keeping last copies, see the planner's docstring).
PushState = Literal[
    "pending", "pushing", "applied", "retained", "failed", "unreachable", "stalled", "superseded"
]


class PushStatus(BaseModel):
    """``push[node_id]``: the last push of this placement version to one node."""

    model_config = ConfigDict(extra="allow")

    status: PushState = "pending"
    version: int
    at: float
    models: list[str] = Field(default_factory=list)
    plan_id: str | None = None
    attempts: int = 0
    retry_at: float | None = None
    code: str | None = None
    error: str | None = None
    http_status: int | None = None
    seconds: float | None = None
    held_models: list[str] | None = None
    fetched_bytes_by_source: dict[str, int] | None = None
    evicted_bytes: int | None = None
    progress: dict[str, int] | None = None
    retained: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ServerPlacement(BaseModel):
    """``servers[node_id]``: what one node is placed to hold."""

    models: list[str] = Field(default_factory=list)
    blocks: list[str] = Field(default_factory=list)
    used_bytes: int = 0


class DispatchState(BaseModel):
    """The push round of a placement: ``running`` until every push ended (any outcome)."""

    state: Literal["running", "done"] = "running"
    started_at: float
    alive_at: float | None = None  # refreshed while the round runs (a silent one died)
    finished_at: float | None = None


class PlacementRecord(BaseModel):
    """The stored placement (``GET /v1/placement`` shows it)."""

    model_config = ConfigDict(extra="allow")

    version: int
    solver: str
    status: str
    hit_ratio: float = 0.0
    solve_seconds: float = 0.0
    planned_at: float
    trigger: str
    planned_by: str | None = None  # the controller replica that planned it
    topology: str
    nodes: dict[str, str] = Field(default_factory=dict)
    problem: dict[str, int] = Field(default_factory=dict)
    servers: dict[str, ServerPlacement] = Field(default_factory=dict)
    revisions: dict[str, str] = Field(default_factory=dict)
    push: dict[str, PushStatus] = Field(default_factory=dict)
    dispatch: DispatchState | None = None

    def to_json(self) -> dict[str, Any]:
        doc = self.model_dump(exclude={"push"}, exclude_none=True)
        doc["push"] = {n: p.to_json() for n, p in self.push.items()}
        return doc
