"""``GET /v1/planner``: which controller replica answers, and which one leads the planner loop.

Every replica on one Redis serves every request; the leader lease (:mod:`controller.leader`)
decides whose background loop plans. ``leader`` is read from Redis, so all replicas agree on it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller.api.deps import PlannerDep, StateDep

router = APIRouter(tags=["health"])


@router.get("/v1/planner")
def planner_view(planner: PlannerDep, state: StateDep) -> dict[str, Any]:
    holder = state.lease_holder()
    return {
        "replica_id": planner.replica_id,
        "leading": planner.leadership.leading(),
        "leader": {"replica_id": holder[0], "term": holder[1]} if holder else None,
        "loop": planner.settings.auto_plan,
    }
