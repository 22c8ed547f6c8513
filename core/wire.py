"""The messages that cross a process boundary between TrimCache's services, one pydantic model each.

The side that builds a message and the side that parses it import the same model here, so the
two cannot drift (docs/api.md has the prose):

================  ===============================  =============================================
model             built by                         parsed by
================  ===============================  =============================================
:class:`ErrorBody`   every service's error handler    ``client._errors``, the planner
:class:`NodeHeartbeat`  ``edge_node.heartbeat``       ``PUT /v1/nodes/{id}`` (controller)
:class:`NodeRegistered`  ``PUT /v1/nodes/{id}``       ``edge_node.heartbeat``
:class:`EdgePlan`    ``controller.planner``           ``PUT /v1/plan`` (edge node)
:class:`PlanAccepted`  ``PUT /v1/plan`` (202)         ``controller.planner``
:class:`PlanStatus`  ``GET /v1/plan`` (edge node)     ``controller.planner``
:class:`RouteSource`  ``controller.routing``          ``client._route``
:class:`RouteDelivery`  ``controller.delay_routing``  ``client._route``
:class:`AgentSwitch`  ``controller.agents``           ``PUT /v1/agent`` (edge node)
:class:`AgentHandover`  ``trimcache agents``          ``POST /v1/agents:takeover|release``
:class:`AgentOutcome`  ``controller.agents``          ``trimcache agents``
================  ===============================  =============================================

Manifests travel in their own versioned JSON form (:meth:`core.manifest.ModelManifest.to_dict`),
checked by :meth:`~core.manifest.ModelManifest.from_dict` on arrival; here they are plain JSON
objects. Pure: pydantic only (no web framework, no HTTP client).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.errors import ErrorCode

__all__ = [
    "EDGE_PLAN_SCHEMA",
    "AgentHandover",
    "AgentOutcome",
    "AgentOutcomeKind",
    "AgentSwitch",
    "MAX_BYTES",
    "MAX_VERSION",
    "EdgePlan",
    "ErrorBody",
    "ErrorCode",
    "ErrorDetail",
    "NodeHeartbeat",
    "NodeRegistered",
    "PlanAccepted",
    "PlanState",
    "PlanProgressCounts",
    "PlanStatus",
    "RouteDelivery",
    "RouteSource",
]

EDGE_PLAN_SCHEMA = "trimcache.edge-plan/v1"
# Largest byte count and version number accepted (2**53: exact in every JSON parser).
MAX_BYTES = 2**53
MAX_VERSION = 2**53
# Coordinates in metres (the controller's topology uses the same bound).
MAX_COORD_M = 1e7

ByteCount = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Version = Annotated[int, Field(ge=0, le=MAX_VERSION)]
Coordinate = Annotated[float, Field(ge=-MAX_COORD_M, le=MAX_COORD_M, allow_inf_nan=False)]


def check_http_url(value: str) -> str:
    """``value`` if it is an absolute http(s) URL with a host, else ValueError.

    >>> check_http_url("http://127.0.0.1:8001")
    'http://127.0.0.1:8001'
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a usable URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    if any(c.isspace() for c in value):
        raise ValueError("a URL has no whitespace")
    return value


#: A node id as the controller's paths accept it (``/v1/nodes/{node_id}``).
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NodeIdText = Annotated[str, Field(pattern=NODE_ID_PATTERN)]


class ErrorDetail(BaseModel):
    code: str = Field(max_length=64)
    message: str


class ErrorBody(BaseModel):
    """Every error response of every service: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail

    @classmethod
    def of(cls, code: str, message: str) -> ErrorBody:
        return cls(error=ErrorDetail(code=str(code), message=message))


class LiveGroup(BaseModel):
    """A block an edge is broadcasting or has queued (``NodeHeartbeat.broadcast``): its size,
    the bytes already on the air, and when it is expected to start and end, in seconds from
    the heartbeat (a negative start: on the air since)."""

    block_id: str = Field(min_length=1, max_length=128)
    size_bytes: ByteCount
    sent_bytes: ByteCount = 0
    starts_in_s: float = Field(ge=-86_400, le=86_400, allow_inf_nan=False)
    ends_in_s: float = Field(ge=0, le=86_400, allow_inf_nan=False)


class NodeHeartbeat(BaseModel):
    """``PUT /v1/nodes/{node_id}``: an edge node registering or renewing its registration."""

    url: str = Field(max_length=2048)
    capacity_bytes: ByteCount | None = None
    position: tuple[Coordinate, Coordinate] = (0.0, 0.0)
    physical_bytes: ByteCount = 0
    models: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=100_000
    )
    blocks_digest: str | None = Field(default=None, max_length=128)
    # The last placement version the node applied: a controller whose Redis lost its state
    # never hands out a version at or below it (the edges' fencing would refuse it).
    plan_version: Version | None = None
    # ``lru`` / ``lfu``: the node caches on demand (EDGE_CACHE_POLICY) and takes no plans;
    # ``marl``: it runs its trained agent (EDGE_AGENT_CHECKPOINT, decentralised mode) and
    # takes no plans; None: it holds the controller's planned placement.
    cache_policy: Literal["lru", "lfu", "marl"] | None = None
    # The blocks its emulated radio is broadcasting or has queued (edges with a world and a
    # broadcast window); None: not reported. Routing only: never moves the routing stamp.
    broadcast: list[LiveGroup] | None = Field(default=None, max_length=2000)

    # The controller sends plans to this URL: it must be one an HTTP client can request.
    @field_validator("url")
    @classmethod
    def _usable_url(cls, value: str) -> str:
        return check_http_url(value)


class NodeRegistered(BaseModel):
    """The controller's answer to a heartbeat."""

    node_id: str
    registered: bool
    expires_in_s: float


class EdgePlan(BaseModel):
    """``PUT /v1/plan``: what an edge node must hold (manifests) and where to copy it from."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: str = Field(default=EDGE_PLAN_SCHEMA, alias="schema")
    version: Version
    manifests: list[dict[str, Any]]
    peers: dict[str, list[str]] = Field(default_factory=dict)
    origin_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

    @staticmethod
    def encode(
        version: int,
        manifest_texts: Sequence[str],
        peers: Mapping[str, Sequence[str]],
        origin_url: str | None,
    ) -> bytes:
        """The JSON body of ``EdgePlan(version, manifests, peers, origin_url)`` built from
        manifests already encoded (``ModelManifest.to_json()``): a push round encodes each
        model's manifest once, not once per node (nor a pydantic dump of it, then a JSON
        encode). Same document as ``to_json()`` of that plan."""
        head = json.dumps({"schema": EDGE_PLAN_SCHEMA, "version": version})
        tail = json.dumps({"peers": peers, "origin_url": origin_url})
        return f'{head[:-1]}, "manifests": [{",".join(manifest_texts)}], {tail[1:]}'.encode()


class PlanProgressCounts(BaseModel):
    blocks_total: int = 0
    blocks_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0


#: Where one plan is on an edge node: accepted and waiting for the worker, being transferred,
#: done, given up, or replaced by a newer plan before it finished.
PlanState = Literal["queued", "running", "applied", "failed", "superseded"]


class PlanAccepted(BaseModel):
    """``PUT /v1/plan`` (202): the plan passed validation and is queued for the edge's worker;
    follow it with ``GET /v1/plan`` (``plan_id``)."""

    plan_id: str
    version: Version
    state: PlanState = "queued"


class PlanStatus(BaseModel):
    """``GET /v1/plan`` on an edge node: the last applied version and the current/last plan.

    ``version`` is the last version applied (fencing); ``plan_id``/``plan_version``/``state``
    describe the newest plan accepted (``progress`` counts its transfer, ``error_code`` and
    ``error`` say why it failed, ``held_models`` what the node holds once it applied).
    ``status``/``applying_version`` summarise the same for older readers: ``applying`` while
    a plan is queued or running.
    """

    version: int | None = None
    status: Literal["idle", "applying", "applied", "failed"] = "idle"
    applying_version: int | None = None
    plan_id: str | None = None
    plan_version: int | None = None
    state: PlanState | None = None
    progress: PlanProgressCounts = Field(default_factory=PlanProgressCounts)
    fetched_bytes_by_source: dict[str, int] = Field(default_factory=dict)
    evicted_bytes: int = 0
    error_code: str | None = None
    error: str | None = None
    # The HTTP status the error has everywhere else in the API (e.g. 507 for store_full).
    error_http_status: int | None = None
    held_models: list[str] = Field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None


class RouteSource(BaseModel):
    """One source of a route (``GET /v1/routes/{model_id}``: ``sources[i]``)."""

    url: str
    kind: Literal["edge", "origin"]
    node_id: str | None = None
    expected_ms: float | None = None


#: How a route's serving node gets a block to the client: it holds it, it migrates it from a
#: neighbour edge (``migrate_from``) while sending it, or the client reads it from the origin.
DeliveryHow = Literal["held", "migrate", "origin"]


class RouteDelivery(BaseModel):
    """How one block reaches the client (``GET /v1/routes/{model_id}``: ``delivery[block_id]``).

    ``source`` and ``migrate_from`` index the route's ``sources``; ``expected_ms`` is the
    delay model's estimate for this block alone. Readers that do not know this field follow
    ``blocks`` as before (its first candidate is ``source``).
    """

    source: int = Field(ge=0)
    how: DeliveryHow
    migrate_from: int | None = Field(default=None, ge=0)
    expected_ms: float | None = None
    #: True: ``source`` is broadcasting this block now (or has it queued); the client joins
    #: its group (``controller/live_groups.py``).
    broadcast: bool | None = None


class AgentSwitch(BaseModel):
    """``PUT /v1/agent`` on an edge node: ``enabled`` false hands the node back to the
    controller's plans, true resumes its agent (decentralised mode); ``frozen`` true keeps the
    node's cache as it is (the agent observes demand but applies no plan) until ``frozen``
    false; left out: unchanged."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool
    frozen: bool | None = None


class AgentHandover(BaseModel):
    """``POST /v1/agents:takeover`` / ``POST /v1/agents:release`` on the controller.

    ``node_ids`` names the nodes (each must be live); left out: every node announcing
    ``cache_policy: "marl"`` (takeover), every node the controller took over (release)."""

    model_config = ConfigDict(extra="forbid")

    node_ids: list[NodeIdText] | None = Field(default=None, min_length=1, max_length=10_000)

    @field_validator("node_ids")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("node_ids must not repeat an id")
        return value


#: What a takeover or release did on one node: the edge switched its agent (``taken`` /
#: ``released``), answered that it runs no agent (``not_agent``), could not be reached
#: (``unreachable``) or refused (``failed``: ``code``, ``http_status``).
AgentOutcomeKind = Literal["taken", "released", "not_agent", "unreachable", "failed"]


class AgentOutcome(BaseModel):
    """One node of a takeover/release answer (``nodes[i]``)."""

    node_id: str
    outcome: AgentOutcomeKind
    url: str
    code: str | None = None
    error: str | None = None
    http_status: int | None = None
    #: The edge's ``GET /v1/agent`` document as ``PUT /v1/agent`` answered it.
    agent: dict[str, Any] | None = None
    #: After the plan the takeover triggered: the node is a server of the stored placement
    #: (takeover), or no longer is (release); None when nothing was planned.
    planned: bool | None = None
