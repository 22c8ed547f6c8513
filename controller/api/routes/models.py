"""The model catalogue: ``/v1/models`` (indexing through the origin on ``POST``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils._validators import validate_repo_id
from pydantic import BaseModel, Field, field_validator

from controller.api.deps import AuthDep, MetricsDep, SettingsDep, StateDep
from controller.errors import InvalidRequestError, ModelNotFoundError
from controller.indexer import add_model as add_to_catalogue
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

    @field_validator("repo_id")
    @classmethod
    def _hub_repo_id(cls, value: str) -> str:
        # The Hub's own rule too (no trailing "." or "-", no "--"/".."): 422, never a 500.
        try:
            validate_repo_id(value)
        except HFValidationError as exc:
            raise ValueError(str(exc)) from None
        return value


@router.post("/v1/models", status_code=201, dependencies=[AuthDep])
def add_model(
    body: AddModel, state: StateDep, settings: SettingsDep, metrics: MetricsDep
) -> JSONResponse:
    entry, created = add_to_catalogue(
        state,
        metrics,
        model_id=body.model_id,
        repo_id=body.repo_id,
        revision=body.revision,
        origin_url=settings.origin_url,
        manifest_cache_dir=settings.manifest_cache_dir,
    )
    return JSONResponse(entry.summary(), status_code=201 if created else 200)


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
    request: Request,
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
    doc: dict[str, Any] = {"models": [e.summary() for e in entries]}
    indexer = getattr(request.app.state, "origin_indexer", None)
    if indexer is not None:  # CONTROLLER_INDEX_FROM_ORIGIN: how far it got
        doc["origin_index"] = indexer.status.to_json()
    return doc


@router.get("/v1/models/{model_id}")
def get_model(model_id: ModelId, state: StateDep) -> JSONResponse:
    entry = state.get_model(model_id)
    if entry is None:
        raise ModelNotFoundError(model_id)
    doc = {**entry.summary(), "indexed_at": entry.indexed_at, "manifest": entry.manifest.to_dict()}
    return JSONResponse(doc)


@router.delete("/v1/models/{model_id}", dependencies=[AuthDep])
def delete_model(model_id: ModelId, state: StateDep) -> dict[str, Any]:
    if not state.delete_model(model_id):
        raise ModelNotFoundError(model_id)
    return {"model_id": model_id, "deleted": True}
