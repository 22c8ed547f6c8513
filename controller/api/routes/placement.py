"""The placement: ``GET /v1/placement`` and ``POST /v1/placement:plan`` (auth)."""

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
    "topology",
    "problem",
    "servers",
    "push",
)


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
    return placement_view(state.get_placement(), settings.solver)


@router.post("/v1/placement:plan", dependencies=[AuthDep])
def plan_now(planner: PlannerDep, settings: SettingsDep) -> dict[str, Any]:
    return placement_view(planner.plan(trigger="manual"), settings.solver)
