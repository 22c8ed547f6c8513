"""The placement: ``GET /v1/placement`` and ``POST /v1/placement:plan`` (auth).

Both answer the stored placement plus ``last_plan``, the latest plan attempt: a re-plan that
kept the placement (``outcome: "kept"``) leaves the version alone and says why there.
``POST /v1/placement:plan`` answers once the placement is stored and its pushes dispatched
(``push[node].status`` ``pending``/``pushing``, ``dispatch.state`` ``running``); follow the
pushes with ``GET /v1/placement`` until ``dispatch.state`` is ``done``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter

from controller.api.deps import AuthDep, PlannerDep, SettingsDep, StateDep

router = APIRouter(tags=["placement"])

_FIELDS = (
    "version",
    "solver",
    "status",
    "hit_ratio",
    "solve_seconds",
    "planned_at",
    "trigger",
    "planned_by",
    "topology",
    "problem",
    "servers",
    "push",
    "dispatch",
)


def attempt_view(attempt: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The last plan attempt as the API shows it (internal bookkeeping left out)."""
    if attempt is None:
        return None
    return {k: v for k, v in attempt.items() if k not in ("signature", "schema_version")}


def placement_view(record: Mapping[str, Any] | None, solver: str) -> dict[str, Any]:
    if record is None:
        return {
            "version": 0,
            "solver": solver,
            "status": "none",
            "hit_ratio": 0.0,
            "servers": {},
            "push": {},
        }
    return {k: record[k] for k in _FIELDS if k in record}


@router.get("/v1/placement")
def get_placement(state: StateDep, settings: SettingsDep) -> dict[str, Any]:
    view = placement_view(state.get_placement(), settings.planning_solver)
    last = attempt_view(state.get_plan_attempt())
    return {**view, "objective": settings.objective, "last_plan": last}


@router.post("/v1/placement:plan", dependencies=[AuthDep])
def plan_now(planner: PlannerDep, state: StateDep, settings: SettingsDep) -> dict[str, Any]:
    view = placement_view(planner.plan(trigger="manual"), settings.planning_solver)
    last = attempt_view(state.get_plan_attempt())
    return {**view, "objective": settings.objective, "last_plan": last}
