"""Routes for clients: ``GET /v1/routes/{model_id}?area_id=`` (or ``?x_m=&y_m=``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from controller.api.deps import MetricsDep, PlannerDep, SettingsDep, StateDep
from controller.errors import InvalidRequestError, ModelNotFoundError
from controller.routing import build_route
from controller.topology import MAX_COORD_M, MAX_ID_CHARS

router = APIRouter(tags=["routes"])


@router.get("/v1/routes/{model_id}")
def get_route(
    model_id: Annotated[str, Path(min_length=1, max_length=128)],
    state: StateDep,
    planner: PlannerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    area_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    x_m: Annotated[
        float | None, Query(ge=-MAX_COORD_M, le=MAX_COORD_M, allow_inf_nan=False)
    ] = None,
    y_m: Annotated[
        float | None, Query(ge=-MAX_COORD_M, le=MAX_COORD_M, allow_inf_nan=False)
    ] = None,
) -> JSONResponse:
    catalogue = planner.catalogue()
    entry = catalogue.get(model_id)
    if entry is None:
        raise ModelNotFoundError(model_id)
    nodes = state.live_nodes()
    view = planner.active_topology(nodes)
    point: tuple[float, float] | None = None
    if (x_m is None) != (y_m is None):
        raise InvalidRequestError("give both x_m and y_m, or neither")
    if x_m is not None and y_m is not None:
        point = (x_m, y_m)
    elif area_id is not None and area_id in view.topology.areas:
        area = view.topology.areas[area_id]
        point = (area.x_m, area.y_m)
    # An unknown area ranks edges as if no position were given: a route is still useful.
    held_ids = {m for n in nodes for m in n.serving_models}
    held_entries = [catalogue[m] for m in sorted(held_ids) if m in catalogue]
    route = build_route(
        entry,
        nodes=nodes,
        blocks_by_model=planner.blocks_by_model(held_entries),
        topology=view.topology,
        point=point,
        origin_url=settings.origin_url,
    )
    metrics.routes.inc()
    # Straight to JSON: FastAPI's encoder walks every manifest entry and dominates the latency.
    return JSONResponse(route)
