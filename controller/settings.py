"""Controller settings: one frozen object built from ``CONTROLLER_*`` environment variables.

``__main__`` builds it once; tests construct ``Settings(...)`` directly. Nothing reads the
environment anywhere else in the controller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.asgi import DEFAULT_MAX_BODY_BYTES, DEFAULT_READ_TIMEOUT_S


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONTROLLER_", frozen=True, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    origin_url: str = "http://127.0.0.1:8000"
    solver: str = "trimcaching-gen"
    # What planning and routing minimise: "hit-ratio" (the first system: `solver`) or "delay"
    # (the second: `delay_solver` over the delay model, routes by expected per-block delay;
    # controller/delay_planning.py).
    objective: Literal["hit-ratio", "delay"] = "hit-ratio"
    delay_solver: str = "delay-greedy"
    # The trained agents `delay_solver=marl` runs (controller.delay.marl.save_checkpoint).
    marl_checkpoint: Path | None = None
    # Request-time migration in routes (controller.delay_routing): "auto" = with the delay
    # objective only; "on" / "off" whatever the objective.
    migration: Literal["auto", "on", "off"] = "auto"
    # Periodic re-plan (0: only on changes and on `POST /v1/placement:plan`).
    plan_interval_s: float = Field(default=60.0, ge=0)
    # Run the background loop at all (re-plans on membership/topology changes,
    # retries failed pushes). Off: only `POST /v1/placement:plan` plans.
    auto_plan: bool = True
    # How often the loop looks for changes, and how long a change must stay quiet before it
    # triggers a re-plan (nodes registering one by one).
    check_interval_s: float = Field(default=0.5, gt=0)
    settle_s: float = Field(default=1.5, ge=0)
    # A failed (or drifted) push is retried after this long, doubling (with jitter) after each
    # failure of the same push up to retry_max_interval_s, at most push_retry_budget times per
    # placement version (a new placement starts a new budget).
    retry_interval_s: float = Field(default=3.0, ge=0)
    retry_max_interval_s: float = Field(default=300.0, ge=0)
    push_retry_budget: int = Field(default=8, ge=1)
    # A node whose last heartbeat is older than this drops out (Redis key TTL).
    heartbeat_expiry_s: float = Field(default=15.0, gt=0)
    # Half-life of the demand statistics.
    demand_half_life_s: float = Field(default=600.0, gt=0)
    # Bearer token for control endpoints and for pushing plans to edge nodes ("" = no auth).
    auth_token: str = ""
    # Token for pushing plans to edge nodes; defaults to auth_token.
    edge_auth_token: str | None = None
    topology_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # This process's name among the controller replicas on one Redis (leader lease, the
    # placement's ``planned_by``); unset: ``{hostname}:{pid}``.
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    # Liveness of one plan push (the node answers 202, then applies the plan in the
    # background): the push is abandoned after push_timeout_s in all, or as soon as the node's
    # reported progress (``GET /v1/plan`` bytes/blocks done) has not moved for push_stall_s (a
    # node that does not even answer the PUT within push_stall_s counts as stalled too).
    push_timeout_s: float = Field(default=600.0, gt=0)
    push_stall_s: float = Field(default=30.0, gt=0)
    # A node that does not even answer the PUT of a plan within this long is given up
    # (stalled) at once: a hung edge.
    push_accept_timeout_s: float = Field(default=10.0, gt=0)
    # Pushes run concurrently on this many threads (each follows one node's plan).
    push_workers: int = Field(default=16, ge=1, le=256)
    # Where a plan's CPU work (problem, solver runs, replan decision) runs: "process", a
    # worker process of this controller (controller.plan_worker; requests do not wait behind
    # it for the GIL), or "thread", the planning thread itself.
    plan_worker: Literal["process", "thread"] = "process"
    # The cross-process plan lock, and the leader lease of the controller replica that runs the
    # background loop (controller.leader), expire this long after their holder stopped
    # renewing them: a crashed (even SIGKILLed) replica is replaced within this and a third.
    plan_lock_ttl_s: float = Field(default=6.0, gt=0)
    # Timeout of one Redis command; also bounds how long a request waits when Redis is down.
    redis_timeout_s: float = Field(default=2.0, gt=0)
    solver_time_limit_s: float | None = Field(default=30.0, gt=0)
    # At startup, index every repo the origin lists (HfApi.list_models), in the background and
    # retrying until all are in, then plan once (controller/indexer.py, OriginIndexer).
    index_from_origin: bool = False
    # Manifests built before, by (repo, commit, model id): a commit names fixed content, so
    # indexing it again downloads nothing (None: no cache).
    manifest_cache_dir: Path | None = None
    solver_seed: int = 0
    # Stable placement: a re-plan replaces a still-valid placement only when its net gain
    # (hit ratio gained, per `controller.placement.evaluate`, minus the move cost below)
    # exceeds this many hit-ratio points; otherwise the current placement is kept (nothing
    # moves, the version stays). A node that joins or leaves, a capacity that shrinks below
    # what a node holds, or a model leaving the catalogue always re-plans.
    replan_min_gain: float = Field(default=0.01, ge=0, le=1)
    # Hit-ratio points that moving one GiB of blocks (migrated or fetched) costs a re-plan.
    replan_move_cost_per_gib: float = Field(default=0.01, ge=0)
    # Request bodies: at most this many bytes (413), and no pause longer than this (408).
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    read_timeout_s: float = Field(default=DEFAULT_READ_TIMEOUT_S, gt=0)

    @field_validator("solver")
    @classmethod
    def _known_solver(cls, value: str) -> str:
        from controller.placement import SOLVERS

        if value not in SOLVERS:
            raise ValueError(f"unknown solver {value!r}; choose from {', '.join(SOLVERS)}")
        return value

    @property
    def planning_solver(self) -> str:
        """The solver plans use: ``solver`` (hit ratio) or ``delay_solver`` (delay)."""
        return self.delay_solver if self.objective == "delay" else self.solver

    @property
    def route_migration(self) -> bool:
        """Whether routes send clients to a serving edge that migrates blocks it lacks."""
        return self.migration == "on" or (self.migration == "auto" and self.objective == "delay")

    @field_validator("delay_solver")
    @classmethod
    def _known_delay_solver(cls, value: str) -> str:
        from controller.delay import DELAY_SOLVERS

        if value not in DELAY_SOLVERS:
            raise ValueError(
                f"unknown delay solver {value!r}; choose from {', '.join(DELAY_SOLVERS)}"
            )
        return value

    @field_validator("origin_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")
