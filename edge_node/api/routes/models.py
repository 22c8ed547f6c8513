"""Model routes: the complete models held, their manifests, and dropping one (auth)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from edge_node.api.deps import AuthDep, NodeDep

router = APIRouter(tags=["models"])


@router.get("/v1/models")
def list_models(node: NodeDep) -> dict[str, Any]:
    return {
        "models": [
            {
                "model_id": m.model_id,
                "repo_id": m.repo_id,
                "revision": m.revision,
                "logical_bytes": m.total_bytes,
            }
            for m in node.complete_models()
        ]
    }


@router.get("/v1/models/{model_id}/manifest")
def get_manifest(model_id: str, node: NodeDep) -> Response:
    return Response(node.manifest(model_id).to_json(), media_type="application/json")


@router.delete("/v1/models/{model_id}", dependencies=[AuthDep])
def delete_model(model_id: str, node: NodeDep) -> dict[str, Any]:
    evicted = node.delete_model(model_id)
    return {"model_id": model_id, "status": "deleted", "evicted_bytes": evicted}
