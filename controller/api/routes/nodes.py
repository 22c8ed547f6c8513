"""Edge node registration and heartbeats: ``/v1/nodes``."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path

from controller import live_groups
from controller.api.deps import AuthDep, MetricsDep, NodeAuthDep, SettingsDep, StateDep
from controller.errors import NodeNotFoundError
from controller.state import NodeRecord
from core.wire import (
    MAX_BYTES,
    MAX_VERSION,
    NODE_ID_PATTERN,
    NodeHeartbeat,
    NodeRegistered,
)

__all__ = ["MAX_BYTES", "MAX_VERSION", "router"]

router = APIRouter(tags=["nodes"])

NodeId = Annotated[str, Path(pattern=NODE_ID_PATTERN)]


def age_s(node: NodeRecord, now_s: float) -> float:
    """Seconds since the node's last heartbeat, as views show it."""
    return round(max(0.0, now_s - node.last_seen), 3)


def node_view(node: NodeRecord, now_s: float | None = None) -> dict[str, Any]:
    now = time.time() if now_s is None else now_s
    return {
        "node_id": node.node_id,
        "url": node.url,
        "capacity_bytes": node.capacity_bytes if node.capacity_bytes >= 0 else None,
        "position": list(node.position),
        "physical_bytes": node.physical_bytes,
        "models": list(node.models),
        "dropping": list(node.dropping),
        "blocks_digest": node.blocks_digest,
        "plan_version": node.plan_version,
        "cache_policy": node.cache_policy,
        "registered_at": node.registered_at,
        "last_seen": node.last_seen,
        "age_s": age_s(node, now),
    }


@router.put("/v1/nodes/{node_id}", dependencies=[NodeAuthDep])
def put_node(
    node_id: NodeId,
    body: NodeHeartbeat,
    state: StateDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> dict[str, Any]:
    now = time.time()
    record = NodeRecord(
        node_id=node_id,
        url=body.url.rstrip("/"),
        capacity_bytes=body.capacity_bytes if body.capacity_bytes is not None else -1,
        position=(float(body.position[0]), float(body.position[1])),
        physical_bytes=body.physical_bytes,
        models=tuple(body.models),
        blocks_digest=body.blocks_digest,
        plan_version=body.plan_version,
        cache_policy=body.cache_policy,
        registered_at=now,
        last_seen=now,
    )
    new = state.put_node(record, ttl_s=settings.heartbeat_expiry_s)
    if body.broadcast is not None:  # routing hints only: not part of the routing stamp
        live_groups.store(
            state, node_id, body.broadcast, now=now, keep_s=settings.heartbeat_expiry_s
        )
    metrics.heartbeats.inc()
    return NodeRegistered(
        node_id=node_id, registered=new, expires_in_s=settings.heartbeat_expiry_s
    ).model_dump()


@router.get("/v1/nodes")
def list_nodes(state: StateDep) -> dict[str, Any]:
    now = time.time()
    return {"nodes": [node_view(n, now) for n in state.live_nodes()]}


@router.get("/v1/nodes/{node_id}")
def get_node(node_id: NodeId, state: StateDep) -> dict[str, Any]:
    node = state.get_node(node_id)
    if node is None:
        raise NodeNotFoundError(node_id)
    return node_view(node)


@router.delete("/v1/nodes/{node_id}", dependencies=[AuthDep])
def delete_node(node_id: NodeId, state: StateDep) -> dict[str, Any]:
    if not state.delete_node(node_id):
        raise NodeNotFoundError(node_id)
    return {"node_id": node_id, "deleted": True}
