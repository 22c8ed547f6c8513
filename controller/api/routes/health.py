"""Liveness, metrics and the JSON status: ``/healthz``, ``/metrics``, ``/v1/status``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.api.deps import MetricsDep, PlannerDep, SettingsDep, StateDep
from controller.api.routes.nodes import node_view
from controller.api.routes.placement import attempt_view, placement_view
from controller.errors import StateUnavailableError

router = APIRouter(tags=["health"])


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
def status(state: StateDep, planner: PlannerDep, settings: SettingsDep) -> JSONResponse:
    # A fixed number of Redis round trips whatever the number of nodes (live_nodes: SMEMBERS
    # + one MGET), and straight to JSON (FastAPI's encoder would walk every node view).
    now = time.time()
    nodes = state.live_nodes()
    view = planner.active_topology(nodes)
    attempt = attempt_view(state.get_plan_attempt())
    placement = placement_view(state.get_placement(), settings.solver)
    return JSONResponse(
        {
            "nodes": [node_view(n, now) for n in nodes],
            "placement": placement,
            "last_plan": attempt,
            "catalogue": {
                "models": len(planner.catalogue()),
                "version": state.catalogue_version(),
            },
            "topology": {
                "source": view.source,
                "version": view.version,
                "areas": len(view.topology.areas),
            },
            "demand": demand_view(state.outcomes()),
            "expected_hit_ratio": placement.get("hit_ratio", 0.0),
            "solver": settings.solver,
        }
    )
