"""The model catalogue: ``/v1/models`` (indexing through the origin on ``POST``)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from controller.api.deps import MetricsDep, SettingsDep, StateDep
from controller.errors import ControllerError, InvalidRequestError, ModelNotFoundError
from controller.indexer import index_model
from controller.state import CatalogueEntry

router = APIRouter(tags=["models"])

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ModelId = Annotated[str, Path(pattern=MODEL_ID_PATTERN)]


class AddModel(BaseModel):
    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    repo_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
    revision: str = Field(default="main", min_length=1, max_length=200)


@router.post("/v1/models", status_code=201)
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


def match_revision(entries: list[CatalogueEntry], revision: str) -> list[CatalogueEntry]:
    """Entries of one repo that answer ``revision``, best first.

    A revision matches an entry's resolved commit or the revision it was requested at. ``main``
    with no entry requested at ``main`` falls back to every entry of the repo: the catalogue's
    revisions are the only ones this system serves, so the default branch means one of them.
    """
    exact = [e for e in entries if revision in (e.revision, e.requested_revision)]
    if exact or revision != "main":
        return exact
    return entries


@router.get("/v1/models")
def list_models(
    state: StateDep,
    repo_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    revision: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> dict[str, Any]:
    entries = state.list_models()
    if repo_id is not None:
        entries = [e for e in entries if e.repo_id == repo_id]
        if revision is not None:
            entries = match_revision(entries, revision)
    elif revision is not None:
        raise InvalidRequestError("revision filters need repo_id")
    return {"models": [e.summary() for e in entries]}


@router.get("/v1/models/{model_id}")
def get_model(model_id: ModelId, state: StateDep) -> JSONResponse:
    entry = state.get_model(model_id)
    if entry is None:
        raise ModelNotFoundError(model_id)
    doc = {**entry.summary(), "indexed_at": entry.indexed_at, "manifest": dict(entry.manifest)}
    return JSONResponse(doc)


@router.delete("/v1/models/{model_id}")
def delete_model(model_id: ModelId, state: StateDep) -> dict[str, Any]:
    if not state.delete_model(model_id):
        raise ModelNotFoundError(model_id)
    return {"model_id": model_id, "deleted": True}
