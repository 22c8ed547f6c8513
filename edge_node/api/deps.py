"""FastAPI dependencies (module-level ``Annotated`` aliases, style guide S3)."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request

from core.asgi import bearer_dependency
from edge_node.agent import EdgeAgent
from edge_node.node import EdgeNode
from edge_node.ondemand import OnDemandCache
from edge_node.plans import PlanProgress, PlanWorker
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


def get_plan_worker(request: Request) -> PlanWorker:
    worker: PlanWorker = request.app.state.plan_worker
    return worker


def get_pull(request: Request) -> PullThrough:
    pull: PullThrough = request.app.state.pull
    return pull


def get_ondemand(request: Request) -> OnDemandCache | None:
    ondemand: OnDemandCache | None = request.app.state.ondemand
    return ondemand


def get_agent(request: Request) -> EdgeAgent | None:
    agent: EdgeAgent | None = request.app.state.agent
    return agent


def get_http_client(request: Request) -> httpx.Client:
    client: httpx.Client = request.app.state.http_client
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
NodeDep = Annotated[EdgeNode, Depends(get_node)]
ProgressDep = Annotated[PlanProgress, Depends(get_progress)]
PlanWorkerDep = Annotated[PlanWorker, Depends(get_plan_worker)]
PullDep = Annotated[PullThrough, Depends(get_pull)]
OnDemandDep = Annotated[OnDemandCache | None, Depends(get_ondemand)]
AgentDep = Annotated[EdgeAgent | None, Depends(get_agent)]
HttpClientDep = Annotated[httpx.Client, Depends(get_http_client)]
#: Control endpoints: ``Authorization: Bearer <EDGE_AUTH_TOKEN>`` or 401 ``unauthorized`` (the
#: one policy of :mod:`core.auth`: no token configured refuses every write).
AuthDep = Depends(
    bearer_dependency(lambda request: [get_settings(request).auth_token], setting="EDGE_AUTH_TOKEN")
)
