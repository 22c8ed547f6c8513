"""Liveness, metrics and the JSON status: ``/healthz``, ``/metrics``, ``/v1/status``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.api.deps import MetricsDep, PlannerDep, SettingsDep, StateDep
from controller.api.routes.placement import attempt_view
from controller.api.status_view import StatusView, encode_status
from controller.errors import StateUnavailableError

router = APIRouter(tags=["health"])


async def get_status_view(request: Request) -> StatusView:
    view: StatusView = request.app.state.status_view
    return view


StatusViewDep = Annotated[StatusView, Depends(get_status_view)]


@router.get("/healthz")
def healthz(state: StateDep) -> JSONResponse:
    try:
        state.ping()
    except StateUnavailableError as exc:
        return JSONResponse(
            {
                "status": "unavailable",
                "redis": "down",
                "error": {"code": exc.code, "message": str(exc)},
            },
            status_code=503,
            headers={"X-Error-Code": exc.code},
        )
    return JSONResponse({"status": "ok", "redis": "ok"})


@router.get("/metrics", response_class=PlainTextResponse)
def metrics_text(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def demand_view(outcomes: Mapping[str, int]) -> dict[str, Any]:
    """The outcome counters of client demand reports, with the measured hit ratio."""
    requests = outcomes.get("requests", 0)
    return {
        "requests": requests,
        "hit": outcomes.get("hit", 0),
        "miss": outcomes.get("miss", 0),
        "error": outcomes.get("error", 0),
        "hit_ratio": (outcomes.get("hit", 0) / requests) if requests else None,
        "bytes_by_kind": {
            k.removeprefix("bytes:"): v for k, v in outcomes.items() if k.startswith("bytes:")
        },
    }


@router.get("/v1/status")
def status(
    state: StateDep, planner: PlannerDep, settings: SettingsDep, view: StatusViewDep
) -> Response:
    # Two Redis round trips whatever the number of nodes (the catalogue's entries are read
    # only when its stamp moved); the node views and the placement are encoded from caches
    # keyed by the stored texts (controller.api.status_view), the rest here.
    now = time.time()
    texts = state.status_texts()
    nodes = view.nodes(texts.nodes)
    source, version, areas = planner.topology_summary(len(nodes), texts.topology)
    placement, hit_ratio = view.placement(texts.placement, texts.placement_status, settings.solver)
    attempt = json.loads(texts.plan_attempt) if texts.plan_attempt else None
    rest = {
        "last_plan": attempt_view(attempt),
        "catalogue": {
            "models": len(planner.catalogue(texts.catalogue_stamp)),
            "version": texts.catalogue_stamp[1],
        },
        "topology": {"source": source, "version": version, "areas": areas},
        "demand": demand_view(texts.outcomes),
        "expected_hit_ratio": hit_ratio,
        "solver": settings.solver,
    }
    return Response(encode_status(nodes, now, placement, rest), media_type="application/json")
