"""Routes for clients: ``GET /v1/routes/{model_id}?area_id=`` (or ``?x_m=&y_m=``).

Answers come pre-encoded from :class:`controller.route_cache.RouteCache` (its docstring has
the invalidation rule)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from controller.api.deps import MetricsDep, RouteCacheDep
from controller.errors import InvalidRequestError
from controller.topology import MAX_COORD_M, MAX_ID_CHARS

router = APIRouter(tags=["routes"])


@router.get("/v1/routes/{model_id}")
async def get_route(
    model_id: Annotated[str, Path(min_length=1, max_length=128)],
    routes: RouteCacheDep,
    metrics: MetricsDep,
    area_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    x_m: Annotated[
        float | None, Query(ge=-MAX_COORD_M, le=MAX_COORD_M, allow_inf_nan=False)
    ] = None,
    y_m: Annotated[
        float | None, Query(ge=-MAX_COORD_M, le=MAX_COORD_M, allow_inf_nan=False)
    ] = None,
) -> Response:
    if (x_m is None) != (y_m is None):
        raise InvalidRequestError("give both x_m and y_m, or neither")
    point = (x_m, y_m) if x_m is not None and y_m is not None else None
    body = await routes.route_async(model_id, area_id=area_id, point=point)
    body = await routes.live.apply(routes, model_id, area_id=area_id, point=point, body=body)
    metrics.routes.inc()
    return Response(body, media_type="application/json")
