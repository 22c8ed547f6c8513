"""The edge node's settings: one frozen object built from ``EDGE_*`` env vars (or arguments).

Nothing reads it at import time: ``__main__``/the CLI build it once and ``create_app(settings)``
stores it on ``app.state``; tests construct ``Settings(...)`` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.failover import parse_urls


class Settings(BaseSettings):
    """Edge node configuration (env prefix ``EDGE_``, e.g. ``EDGE_DATA_DIR``)."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", frozen=True, extra="ignore")

    node_id: str = Field(default="edge-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    data_dir: Path = Path("./edge-data")
    #: Bound on the bytes of stored blocks (None: unbounded).
    capacity_bytes: int | None = Field(default=None, ge=0)
    #: Default origin (HF-compatible hub) when a plan names none, and for repairs.
    origin_url: str | None = None
    #: The controller, or its replicas comma-separated (tried in turn: core.failover).
    controller_url: str | None = None
    #: Comma-separated ``host:port`` (or ``host``: any port) a plan may name besides the
    #: configured origin and controller, e.g. the peer edges (edge_node.allowlist).
    allowed_hosts: str = ""
    #: Bearer token for control endpoints (plans, eviction). Unset: control endpoints refuse.
    auth_token: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    #: URL other parties reach this node at (heartbeats); default ``http://host:port``.
    public_url: str | None = None
    position_x_m: float = 0.0
    position_y_m: float = 0.0
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    #: Radio link emulation (None: off): one rate shared by all the node's responses, and a
    #: latency added once per request (see edge_node.link).
    link_rate_bytes_per_s: float | None = Field(default=None, gt=0)
    link_latency_ms: float = Field(default=0.0, ge=0)
    #: The world (``trimcache.world/v1``, testbed/world.py): with it the node emulates its
    #: cluster's shared CoMP downlink (edge_node.radio) instead of the ``link_*`` byte rate.
    world_file: Path | None = None
    #: Broadcast window W in seconds (edge_node.radio): requests for one block within it share
    #: one transmission. 0: off (every request's blocks go out on their own).
    broadcast_window_s: float = Field(default=0.0, ge=0, le=60)
    #: Directory of the clusters' airtime ledgers and broadcast group registries, shared by
    #: the edges of one machine (unset: in-process, right for a cluster of one edge).
    medium_dir: Path | None = None
    #: Parallel transfers while applying a plan.
    fetch_workers: int = Field(default=4, ge=1, le=64)
    fetch_timeout_s: float = Field(default=30.0, gt=0)
    #: Re-hash every stored block in the background at startup, then every interval (0: never).
    scrub_on_start: bool = True
    scrub_interval_s: float = Field(default=0.0, ge=0)
    #: Blocks up to this size are re-hashed on every read; larger trusted ones use sendfile.
    verify_on_read_max_bytes: int = Field(default=64 * 1024, ge=0)
    #: Hash large trusted blocks while serving them too (slower; catches silent bit rot).
    stream_verify: bool = False
    #: fsync block writes (off only for throwaway nodes in benchmarks).
    durable: bool = True
    #: Pull-through (edge_node.pull): bytes of blocks pulled for Hub requests and not placed
    #: here, held only while a response uses them (outside ``capacity_bytes``).
    pull_buffer_bytes: int = Field(default=256 << 20, ge=0)
    #: Missing bytes fetched per step of one response (the next step is fetched meanwhile).
    pull_window_bytes: int = Field(default=32 << 20, gt=0)
    #: How long catalogue lookups and routes from the controller are reused.
    catalogue_ttl_s: float = Field(default=5.0, ge=0)
    controller_timeout_s: float = Field(default=5.0, gt=0)
    #: ``lru`` / ``lfu``: cache whole models on demand from the requests this node sees
    #: (edge_node.ondemand) instead of holding the controller's planned placement. Unset (or
    #: empty): planned placement.
    cache_policy: Literal["lru", "lfu"] | None = None
    #: Decentralised mode (edge_node.agent): the trained ``marl`` checkpoint this node runs
    #: locally to choose what it caches from the demand it observes (unset: off).
    agent_checkpoint: Path | None = None
    #: Seconds between the agent's decisions.
    agent_interval_s: float = Field(default=5.0, gt=0)
    #: The observed demand: the last N requests that named a model.
    agent_window_requests: int = Field(default=64, ge=1, le=1_000_000)

    @field_validator("cache_policy", mode="before")
    @classmethod
    def _policy_unset(cls, value: object) -> object:
        return None if value in ("", "planned") else value

    @field_validator("world_file", "medium_dir", "agent_checkpoint", mode="before")
    @classmethod
    def _path_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("controller_url")
    @classmethod
    def _url_list(cls, value: str | None) -> str | None:
        return ",".join(parse_urls(value)) if value else None

    @field_validator("origin_url", "public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_cache_owner(self) -> Settings:
        if self.agent_checkpoint is not None and self.cache_policy:
            raise ValueError("EDGE_AGENT_CHECKPOINT and EDGE_CACHE_POLICY exclude each other")
        return self

    @property
    def controller_urls(self) -> tuple[str, ...]:
        """The controller replicas, in the configured order (empty: no controller)."""
        return parse_urls(self.controller_url) if self.controller_url else ()

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
