"""FastAPI dependencies (module-level ``Annotated`` aliases, style guide S3)."""

from __future__ import annotations

import hmac
from typing import Annotated

import httpx
from fastapi import Depends, Request

from edge_node.errors import UnauthorizedError
from edge_node.ingest import PlanProgress
from edge_node.node import EdgeNode
from edge_node.pull import PullThrough
from edge_node.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_node(request: Request) -> EdgeNode:
    node: EdgeNode = request.app.state.node
    return node


def get_progress(request: Request) -> PlanProgress:
    progress: PlanProgress = request.app.state.plan_progress
    return progress


def get_pull(request: Request) -> PullThrough:
    pull: PullThrough = request.app.state.pull
    return pull


def get_http_client(request: Request) -> httpx.Client:
    client: httpx.Client = request.app.state.http_client
    return client


def require_token(request: Request) -> None:
    """Control endpoints: ``Authorization: Bearer <EDGE_AUTH_TOKEN>`` or 401 ``unauthorized``."""
    token: str | None = request.app.state.settings.auth_token
    if not token:
        raise UnauthorizedError("control endpoints are disabled: EDGE_AUTH_TOKEN is not set")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        raise UnauthorizedError("missing or wrong bearer token")


SettingsDep = Annotated[Settings, Depends(get_settings)]
NodeDep = Annotated[EdgeNode, Depends(get_node)]
ProgressDep = Annotated[PlanProgress, Depends(get_progress)]
PullDep = Annotated[PullThrough, Depends(get_pull)]
HttpClientDep = Annotated[httpx.Client, Depends(get_http_client)]
AuthDep = Depends(require_token)
