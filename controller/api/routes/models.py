"""The model catalogue: ``/v1/models`` (indexing through the origin on ``POST``)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from controller.api.deps import AuthDep, MetricsDep, SettingsDep, StateDep
from controller.errors import ControllerError, ModelNotFoundError
from controller.indexer import index_model
from controller.state import CatalogueEntry

router = APIRouter(tags=["models"])

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ModelId = Annotated[str, Path(pattern=MODEL_ID_PATTERN)]


class AddModel(BaseModel):
    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    # The Hub's limits: at most 96 characters per part.
    repo_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$"
    )
    revision: str = Field(default="main", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


@router.post("/v1/models", status_code=201, dependencies=[AuthDep])
def add_model(
    body: AddModel, state: StateDep, settings: SettingsDep, metrics: MetricsDep
) -> JSONResponse:
    existing = state.get_model(body.model_id)
    if (
        existing is not None
        and existing.repo_id == body.repo_id
        and body.revision in (existing.revision, existing.requested_revision)
    ):
        # Indexed once: the same repo at the same (requested or resolved) revision is a no-op.
        return JSONResponse(existing.summary(), status_code=200)
    try:
        manifest = index_model(
            body.model_id,
            repo_id=body.repo_id,
            revision=body.revision,
            origin_url=settings.origin_url,
        )
    except ControllerError as exc:
        metrics.indexed.labels(outcome=exc.code).inc()
        raise
    entry = CatalogueEntry(
        model_id=body.model_id,
        repo_id=body.repo_id,
        revision=manifest.revision,
        requested_revision=body.revision,
        total_bytes=manifest.total_bytes,
        blocks=len(manifest.block_sizes()),
        manifest=manifest.to_dict(),
        indexed_at=time.time(),
    )
    state.put_model(entry)
    metrics.indexed.labels(outcome="ok").inc()
    return JSONResponse(entry.summary(), status_code=201)


@router.get("/v1/models")
def list_models(state: StateDep) -> dict[str, Any]:
    return {"models": [e.summary() for e in state.list_models()]}


@router.get("/v1/models/{model_id}")
def get_model(model_id: ModelId, state: StateDep) -> JSONResponse:
    entry = state.get_model(model_id)
    if entry is None:
        raise ModelNotFoundError(model_id)
    doc = {**entry.summary(), "indexed_at": entry.indexed_at, "manifest": dict(entry.manifest)}
    return JSONResponse(doc)


@router.delete("/v1/models/{model_id}", dependencies=[AuthDep])
def delete_model(model_id: ModelId, state: StateDep) -> dict[str, Any]:
    if not state.delete_model(model_id):
        raise ModelNotFoundError(model_id)
    return {"model_id": model_id, "deleted": True}
