"""``GET /v1/stats`` (JSON) and ``GET /metrics`` (Prometheus text, the app's own registry)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_node.api.deps import NodeDep

router = APIRouter(tags=["stats"])


@router.get("/v1/stats")
def get_stats(node: NodeDep) -> dict[str, Any]:
    return node.stats()


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
