"""The topology: ``GET``/``PUT /v1/topology`` (format in :mod:`controller.topology`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from controller.api.deps import AuthDep, PlannerDep, StateDep
from controller.topology import Topology

router = APIRouter(tags=["topology"])


@router.get("/v1/topology")
def get_topology(planner: PlannerDep, state: StateDep) -> dict[str, Any]:
    view = planner.active_topology(state.live_nodes())
    return {**view.topology.to_json(), "version": view.version, "source": view.source}


@router.put("/v1/topology", dependencies=[AuthDep])
def put_topology(state: StateDep, doc: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    doc = {k: v for k, v in doc.items() if k not in ("version", "source")}
    topology = Topology.from_json(doc)
    version = state.put_topology(topology.to_json())
    return {**topology.to_json(), "version": version, "source": "stored"}
