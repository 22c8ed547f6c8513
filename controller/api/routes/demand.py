"""Client demand reports: ``POST /v1/demand`` (counted for the planner, and logged for the
dashboard with the edge node each byte came from)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from controller.api.deps import AuthDep, MetricsDep, SettingsDep, StateDep
from controller.api.routes.models import MODEL_ID_PATTERN
from controller.api.routes.nodes import MAX_BYTES
from controller.dashboard.views import FETCH_LOG_KEEP, fetch_entry
from controller.errors import ModelNotFoundError
from controller.topology import MAX_ID_CHARS

router = APIRouter(tags=["demand"])

UNKNOWN_AREA = "unknown"


class DemandReport(BaseModel):
    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    area_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    outcome: Literal["hit", "miss", "error"] = "hit"
    seconds: float | None = Field(default=None, ge=0, le=1e7, allow_inf_nan=False)
    bytes_by_source: dict[
        Annotated[str, Field(max_length=2048)], Annotated[int, Field(ge=0, le=MAX_BYTES)]
    ] = Field(default_factory=dict, max_length=256)


@router.post("/v1/demand", status_code=202, dependencies=[AuthDep])
def post_demand(
    body: DemandReport, state: StateDep, settings: SettingsDep, metrics: MetricsDep
) -> dict[str, Any]:
    if state.get_model(body.model_id) is None:
        raise ModelNotFoundError(body.model_id)
    node_of_url = {n.url: n.node_id for n in state.live_nodes()}
    by_kind: dict[str, int] = {}
    by_node: dict[str, int] = {}
    for source, nbytes in body.bytes_by_source.items():
        url = source.rstrip("/")
        if source == "local":
            kind = "local"
        elif url == settings.origin_url:
            kind = "origin"
        elif url in node_of_url:
            kind = "edge"
            by_node[node_of_url[url]] = by_node.get(node_of_url[url], 0) + max(0, int(nbytes))
        else:
            kind = "other"
        by_kind[kind] = by_kind.get(kind, 0) + max(0, int(nbytes))
    area_id = body.area_id or UNKNOWN_AREA
    count = state.record_demand(
        area_id=area_id,
        model_id=body.model_id,
        outcome=body.outcome,
        bytes_by_kind=by_kind,
        half_life_s=settings.demand_half_life_s,
    )
    entry = fetch_entry(
        at_s=time.time(),
        model_id=body.model_id,
        area_id=area_id,
        outcome=body.outcome,
        seconds=body.seconds,
        bytes_by_kind=by_kind,
        bytes_by_node=by_node,
    )
    state.record_fetch(entry, keep=FETCH_LOG_KEEP)
    metrics.demand.labels(outcome=body.outcome).inc()
    return {"model_id": body.model_id, "area_id": area_id, "decayed_count": round(count, 6)}
