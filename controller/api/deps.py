"""Module-level dependency aliases for the routes (settings, state, planner, route cache,
metrics, auth)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from controller.metrics import Metrics
from controller.planner import Planner
from controller.route_cache import RouteCache
from controller.settings import Settings
from controller.state import RedisState
from core.asgi import bearer_dependency


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


# Async (they only read app.state): a sync dependency costs a worker-thread hop per request
# (measured: under load, each hop waits for the GIL behind the push workers).
async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_state(request: Request) -> RedisState:
    state: RedisState = request.app.state.redis_state
    return state


async def get_planner(request: Request) -> Planner:
    planner: Planner = request.app.state.planner
    return planner


async def get_route_cache(request: Request) -> RouteCache:
    cache: RouteCache = request.app.state.route_cache
    return cache


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[RedisState, Depends(get_state)]
PlannerDep = Annotated[Planner, Depends(get_planner)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RouteCacheDep = Annotated[RouteCache, Depends(get_route_cache)]

#: Writes need ``Authorization: Bearer <CONTROLLER_AUTH_TOKEN>`` (policy: :mod:`core.auth`).
AuthDep = Depends(
    bearer_dependency(
        lambda request: [settings_of(request).auth_token], setting="CONTROLLER_AUTH_TOKEN"
    )
)
#: Heartbeats: the controller's token or the edge nodes' token. Registering must be
#: authenticated because the controller sends its edge token to registered URLs.
NodeAuthDep = Depends(
    bearer_dependency(
        lambda request: [settings_of(request).auth_token, settings_of(request).edge_auth_token],
        setting="CONTROLLER_AUTH_TOKEN",
    )
)
