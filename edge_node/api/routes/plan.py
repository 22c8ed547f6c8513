"""Plan routes: accept a placement plan (auth; 202, applied by :mod:`edge_node.plans`) and
report the current/last plan and its progress."""

from __future__ import annotations

from fastapi import APIRouter, status

from core.digest import check_block_id
from core.errors import ManifestError
from core.manifest import ModelManifest
from core.wire import EDGE_PLAN_SCHEMA as PLAN_SCHEMA
from core.wire import PlanAccepted, PlanStatus
from edge_node.allowlist import check_allowed
from edge_node.api.deps import AgentDep, AuthDep, NodeDep, PlanWorkerDep, ProgressDep
from edge_node.api.schemas import PlanRequest
from edge_node.errors import InvalidRequestError
from edge_node.ingest import Plan
from edge_node.settings import Settings

router = APIRouter(tags=["plan"])


def _to_plan(request: PlanRequest, settings: Settings) -> Plan:
    if request.schema_ != PLAN_SCHEMA:
        raise InvalidRequestError(
            f"unsupported plan schema {request.schema_!r}, want {PLAN_SCHEMA}"
        )
    try:
        manifests = tuple(ModelManifest.from_dict(m) for m in request.manifests)
    except ManifestError as exc:
        raise InvalidRequestError(f"bad manifest in plan: {exc}") from exc
    ids = [m.model_id for m in manifests]
    if len(set(ids)) != len(ids):
        raise InvalidRequestError("a model appears twice in the plan")
    urls = [request.origin_url or "", *(u for urls in request.peers.values() for u in urls)]
    for url in urls:
        if url and not url.startswith(("http://", "https://")):
            raise InvalidRequestError(f"not an http(s) URL: {url!r}")
    peers = {check_block_id(b): tuple(urls) for b, urls in request.peers.items()}
    check_allowed(settings, filter(None, urls))
    return Plan(
        version=request.version,
        manifests=manifests,
        peers=peers,
        origin_url=request.origin_url,
    )


@router.put(
    "/v1/plan",
    dependencies=[AuthDep],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PlanAccepted,
)
def put_plan(
    request: PlanRequest, node: NodeDep, worker: PlanWorkerDep, agent: AgentDep
) -> PlanAccepted:
    if agent is not None and agent.enabled:
        raise InvalidRequestError(
            "this node runs its agent (EDGE_AGENT_CHECKPOINT); it takes no plans until "
            'PUT /v1/agent {"enabled": false} hands it back'
        )
    if node.settings.cache_policy:
        raise InvalidRequestError(
            f"this node caches on demand (EDGE_CACHE_POLICY={node.settings.cache_policy}); "
            "it takes no plans"
        )
    return worker.submit(_to_plan(request, node.settings))


@router.get("/v1/plan", response_model=PlanStatus)
def get_plan(progress: ProgressDep) -> PlanStatus:
    return progress.to_status()
