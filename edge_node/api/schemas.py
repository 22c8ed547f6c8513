"""Request bodies (pydantic only at the boundary; converted to domain objects in routes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BatchRequest(BaseModel):
    block_ids: list[str] = Field(max_length=100_000)


class PlanRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    schema_: str = Field(default="trimcache.edge-plan/v1", alias="schema")
    version: int
    manifests: list[dict[str, Any]]
    peers: dict[str, list[str]] = Field(default_factory=dict)
    origin_url: str | None = None
