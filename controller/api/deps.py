"""Module-level dependency aliases for the routes (settings, state, planner, metrics, auth)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from controller.errors import UnauthorizedError
from controller.metrics import Metrics
from controller.planner import Planner
from controller.settings import Settings
from controller.state import RedisState


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_state(request: Request) -> RedisState:
    state: RedisState = request.app.state.redis_state
    return state


def get_planner(request: Request) -> Planner:
    planner: Planner = request.app.state.planner
    return planner


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[RedisState, Depends(get_state)]
PlannerDep = Annotated[Planner, Depends(get_planner)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def require_token(request: Request, settings: SettingsDep) -> None:
    """Control endpoints need ``Authorization: Bearer <CONTROLLER_AUTH_TOKEN>`` (unset: open)."""
    if not settings.auth_token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), settings.auth_token.encode()
    ):
        raise UnauthorizedError("missing or wrong bearer token")


AuthDep = Depends(require_token)


def require_node_token(request: Request, settings: SettingsDep) -> None:
    """Heartbeats: the controller's token or the edge nodes' token (unset: open). Registering
    must be authenticated because the controller sends its edge token to registered URLs."""
    tokens = [t for t in (settings.auth_token, settings.edge_auth_token) if t]
    if not tokens:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given = token.strip().encode()
    if scheme.lower() != "bearer" or not any(
        hmac.compare_digest(given, t.encode()) for t in tokens
    ):
        raise UnauthorizedError("missing or wrong bearer token")


NodeAuthDep = Depends(require_node_token)
