"""The delay problem (``trimcache.delay-problem/v1``), its result and their JSON formats.

This module owns the data of the second research system (design.md, "The second system"):
:class:`DelayProblem` (blocks, models, edge nodes with capacity and position, users with
positions, the channel, the backhaul and migration rates, the request slots, and the optional
``clusters``, ``popularity`` and ``deadlines_s`` tables) and :class:`DelayResult`. Everything
is validated once, at construction: unknown ids, negative sizes or rates, probabilities
outside ``[0, 1]``, users that no node covers, clusters naming a missing node raise
``ValueError`` naming the offending entry. The formulas live in :mod:`controller.delay.model`
and are written down in ``docs/delay-model.md``.

Invariants: inputs are never mutated (mappings are copied into read-only proxies); iteration
orders are the input orders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from controller.placement.problem import (
    RESULT_SCHEMA,
    STATUSES,
    ServerPlacement,
    Status,
    as_size,
    check_library,
)

DELAY_PROBLEM_SCHEMA = "trimcache.delay-problem/v1"

Granularity = Literal["block", "model"]
Delivery = Literal["broadcast", "unicast"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
DELIVERIES: tuple[str, ...] = get_args(Delivery)

_ROW_SUM_TOLERANCE = 1e-9


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _position(value: object, where: str) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{where}: position must be [x, y] in metres, got {value!r}")
    x, y = _finite(value[0]), _finite(value[1])
    if x is None or y is None:
        raise ValueError(f"{where}: position must be two finite numbers, got {value!r}")
    return (x, y)


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Euclidean distance in metres."""
    return math.hypot(a[0] - b[0], a[1] - b[1])


@dataclass(frozen=True, slots=True)
class Channel:
    """Downlink parameters shared by every edge node (units in the names)."""

    tx_power_dbm: float = 30.0
    bandwidth_hz: float = 20e6
    noise_dbm_per_hz: float = -174.0
    coverage_m: float = 300.0

    def __post_init__(self) -> None:
        for name in ("tx_power_dbm", "bandwidth_hz", "noise_dbm_per_hz", "coverage_m"):
            if _finite(getattr(self, name)) is None:
                raise ValueError(f"channel.{name}: must be a finite number")
        if self.bandwidth_hz <= 0:
            raise ValueError(f"channel.bandwidth_hz: must be > 0, got {self.bandwidth_hz}")
        if self.coverage_m <= 0:
            raise ValueError(f"channel.coverage_m: must be > 0, got {self.coverage_m}")


@dataclass(frozen=True, slots=True)
class EdgeNode:
    """One edge node: storage capacity in bytes and position in metres."""

    capacity: int
    position: tuple[float, float]


@dataclass(frozen=True, slots=True)
class DelayProblem:
    """A delay-minimisation instance (``trimcache.delay-problem/v1``).

    Args:
        blocks: PB id -> size in bytes (int >= 0).
        models: model id -> its PB ids (non-empty; duplicates dropped, order kept).
        servers: node id -> :class:`EdgeNode` (or a ``{"capacity", "position"}`` mapping).
        users: user id -> position ``(x, y)`` in metres.
        channel: the downlink parameters.
        backhaul_bytes_per_s: cloud -> edge node rate (> 0).
        migration_bytes_per_s: edge node -> edge node rate (> 0).
        slots: per slot, user id -> the model it requests (at least one slot, each non-empty).
        clusters: optional named option: cluster id -> node ids (disjoint); when given, only
            the nodes of a user's home cluster transmit to it (see docs/delay-model.md).
        popularity: optional user id -> model id -> probability (rows sum to <= 1), the
            distribution the slots were drawn from (informational; solvers use the slots).
        deadlines_s: optional model id -> deadline in seconds (> 0): the deadline hit ratio
            is then reported beside the delay.

    Raises:
        ValueError: naming the offending entry.

    Example:
        >>> p = DelayProblem(blocks={"b0": 8}, models={"m0": ["b0"]},
        ...     servers={"s0": {"capacity": 8, "position": [0, 0]}},
        ...     users={"u0": [30, 40]}, channel=Channel(),
        ...     backhaul_bytes_per_s=1.0, migration_bytes_per_s=2.0, slots=[{"u0": "m0"}])
        >>> p.servers["s0"].capacity, p.users["u0"]
        (8, (30.0, 40.0))
    """

    blocks: Mapping[str, int]
    models: Mapping[str, Sequence[str]]
    servers: Mapping[str, Any]
    users: Mapping[str, Any]
    channel: Channel
    backhaul_bytes_per_s: float
    migration_bytes_per_s: float
    slots: Sequence[Mapping[str, str]]
    clusters: Mapping[str, Sequence[str]] = field(default_factory=lambda: MappingProxyType({}))
    popularity: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    deadlines_s: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Internal logic: validate each table against the ones it references, then freeze.
        blocks, models = check_library(self.blocks, self.models)
        if not self.servers:
            raise ValueError("no edge nodes: 'servers' has no entries")
        servers: dict[str, EdgeNode] = {}
        for node_id, entry in self.servers.items():
            servers[node_id] = self._node(node_id, entry)
        users: dict[str, tuple[float, float]] = {}
        for user_id, entry in self.users.items():
            pos = entry.get("position") if isinstance(entry, Mapping) else entry
            users[user_id] = _position(pos, f"user {user_id!r}")
        for name in ("backhaul_bytes_per_s", "migration_bytes_per_s"):
            rate = _finite(getattr(self, name))
            if rate is None or rate <= 0:
                raise ValueError(f"{name}: must be a number > 0, got {getattr(self, name)!r}")
            object.__setattr__(self, name, rate)
        clusters: dict[str, tuple[str, ...]] = {}
        seen: dict[str, str] = {}
        for cluster_id, members in self.clusters.items():
            if isinstance(members, str) or not isinstance(members, Sequence) or not members:
                raise ValueError(f"cluster {cluster_id!r}: must be a non-empty list of node ids")
            for node_id in members:
                if node_id not in servers:
                    raise ValueError(f"cluster {cluster_id!r}: unknown node {node_id!r}")
                if node_id in seen and seen[node_id] != cluster_id:
                    raise ValueError(
                        f"cluster {cluster_id!r}: node {node_id!r} is already in"
                        f" cluster {seen[node_id]!r}"
                    )
                seen[node_id] = cluster_id
            clusters[cluster_id] = tuple(dict.fromkeys(members))
        coverage = self.channel.coverage_m
        for user_id, pos in users.items():
            if not any(distance_m(pos, n.position) <= coverage for n in servers.values()):
                raise ValueError(
                    f"user {user_id!r}: out of range of every node (coverage_m={coverage})"
                )
        if not self.slots:
            raise ValueError("no request slots: 'slots' is empty")
        slots: list[Mapping[str, str]] = []
        for t, slot in enumerate(self.slots):
            if not isinstance(slot, Mapping) or not slot:
                raise ValueError(f"slot {t}: must be a non-empty object user id -> model id")
            for user_id, model_id in slot.items():
                if user_id not in users:
                    raise ValueError(f"slot {t}: unknown user {user_id!r}")
                if not isinstance(model_id, str) or model_id not in models:
                    raise ValueError(
                        f"slot {t}: user {user_id!r} requests unknown model {model_id!r}"
                    )
            slots.append(MappingProxyType(dict(slot)))
        popularity: dict[str, Mapping[str, float]] = {}
        for user_id, row in self.popularity.items():
            if user_id not in users:
                raise ValueError(f"popularity: unknown user {user_id!r}")
            if not isinstance(row, Mapping):
                raise ValueError(f"popularity[{user_id!r}]: must map model id -> probability")
            for model_id, prob in row.items():
                if model_id not in models:
                    raise ValueError(f"popularity[{user_id!r}]: unknown model {model_id!r}")
                p = _finite(prob)
                if p is None or not 0.0 <= p <= 1.0:
                    raise ValueError(
                        f"popularity[{user_id!r}][{model_id!r}]: probability must be in [0, 1],"
                        f" got {prob!r}"
                    )
            total = math.fsum(row.values())
            if total > 1.0 + _ROW_SUM_TOLERANCE:
                raise ValueError(f"popularity[{user_id!r}]: probabilities sum to {total} > 1")
            popularity[user_id] = MappingProxyType({m: float(p) for m, p in row.items()})
        deadlines: dict[str, float] = {}
        for model_id, deadline in self.deadlines_s.items():
            if model_id not in models:
                raise ValueError(f"deadlines_s: unknown model {model_id!r}")
            d = _finite(deadline)
            if d is None or d <= 0:
                raise ValueError(f"deadlines_s[{model_id!r}]: must be > 0, got {deadline!r}")
            deadlines[model_id] = d
        object.__setattr__(self, "blocks", MappingProxyType(blocks))
        object.__setattr__(self, "models", MappingProxyType(models))
        object.__setattr__(self, "servers", MappingProxyType(servers))
        object.__setattr__(self, "users", MappingProxyType(users))
        object.__setattr__(self, "slots", tuple(slots))
        object.__setattr__(self, "clusters", MappingProxyType(clusters))
        object.__setattr__(self, "popularity", MappingProxyType(popularity))
        object.__setattr__(self, "deadlines_s", MappingProxyType(deadlines))

    @staticmethod
    def _node(node_id: str, entry: object) -> EdgeNode:
        if isinstance(entry, EdgeNode):
            capacity: object = entry.capacity
            pos: object = entry.position
        elif isinstance(entry, Mapping):
            unknown = sorted(set(entry) - {"capacity", "position"})
            if unknown:
                raise ValueError(f"server {node_id!r}: unknown key {unknown[0]!r}")
            capacity, pos = entry.get("capacity"), entry.get("position")
        else:
            raise ValueError(f"server {node_id!r}: must be {{'capacity', 'position'}}")
        checked = as_size(capacity)
        if checked is None:
            raise ValueError(f"server {node_id!r}: capacity must be an int >= 0, got {capacity!r}")
        return EdgeNode(capacity=checked, position=_position(pos, f"server {node_id!r}"))

    def model_bytes(self, model_id: str) -> int:
        """A model's size on its own: the sum of its blocks."""
        return sum(self.blocks[b] for b in self.models[model_id])

    def storage_bytes(self, ids: Sequence[str] | frozenset[str], granularity: Granularity) -> int:
        """Bytes a node uses for ``ids``: the union of blocks, or the sum of whole models."""
        if granularity == "model":
            return sum(self.model_bytes(m) for m in set(ids))
        return sum(self.blocks[b] for b in set(ids))


@dataclass(frozen=True, slots=True)
class DelayStats:
    """What :func:`~controller.delay.model.evaluate_delay` measures (seconds).

    ``request_delays_s`` lists D_u for every (slot, user) request, slots in order and users
    in the slot's input order; ``deadline_hit_ratio`` is None without ``deadlines_s``.
    """

    mean_s: float
    p95_s: float
    makespan_s: float
    deadline_hit_ratio: float | None
    request_delays_s: tuple[float, ...]

    def to_json(self) -> dict[str, float]:
        """The result's ``"delay"`` object."""
        out = {"mean_s": self.mean_s, "p95_s": self.p95_s, "makespan_s": self.makespan_s}
        if self.deadline_hit_ratio is not None:
            out["deadline_hit_ratio"] = self.deadline_hit_ratio
        return out


# What one node holds (``models`` complete there, ``blocks``, bytes used): the same record as a
# hit-ratio result's server entry.
NodeHolding = ServerPlacement


@dataclass(frozen=True, slots=True)
class DelayResult:
    """A delay solver's answer (the placement-result format with ``"objective": "delay"``).

    ``granularity`` says what ``placement`` holds (PB ids, or whole model ids), ``delivery``
    which delivery rule the reported ``delay`` was evaluated with; ``delay`` is always
    ``evaluate_delay(problem, placement, granularity=..., delivery=...)``.
    """

    solver: str
    granularity: Granularity
    delivery: Delivery
    placement: Mapping[str, tuple[str, ...]]
    servers: Mapping[str, NodeHolding]
    delay: DelayStats
    status: Status
    solve_seconds: float
    info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


# ---------------------------------------------------------------------------------------------
# JSON in/out

_PROBLEM_KEYS = frozenset(
    {
        "schema",
        "blocks",
        "models",
        "servers",
        "users",
        "channel",
        "backhaul_bytes_per_s",
        "migration_bytes_per_s",
        "slots",
        "clusters",
        "popularity",
        "deadlines_s",
    }
)
_CHANNEL_KEYS = frozenset({"tx_power_dbm", "bandwidth_hz", "noise_dbm_per_hz", "coverage_m"})


def _mapping(doc: Mapping[str, Any], key: str, *, required: bool = True) -> Mapping[str, Any]:
    if key not in doc:
        if required:
            raise ValueError(f"missing key {key!r}")
        return {}
    value = doc[key]
    if not isinstance(value, Mapping):
        raise ValueError(f"{key!r} must be a JSON object")
    return value


def delay_problem_from_json(doc: Any) -> DelayProblem:
    """Parse a ``trimcache.delay-problem/v1`` document (already ``json.loads``-ed).

    Raises:
        ValueError: wrong schema, unknown or missing keys, or any validation error of
            :class:`DelayProblem`.

    Example:
        >>> p = delay_problem_from_json({"schema": DELAY_PROBLEM_SCHEMA,
        ...     "blocks": {"b0": 1}, "models": {"m0": ["b0"]},
        ...     "servers": {"s0": {"capacity": 1, "position": [0, 0]}},
        ...     "users": {"u0": {"position": [3, 4]}}, "channel": {"coverage_m": 10},
        ...     "backhaul_bytes_per_s": 1, "migration_bytes_per_s": 10,
        ...     "slots": [{"u0": "m0"}]})
        >>> p.channel.coverage_m, p.channel.bandwidth_hz
        (10, 20000000.0)
    """
    if not isinstance(doc, Mapping):
        raise ValueError("a delay problem must be a JSON object")
    schema = doc.get("schema")
    if schema != DELAY_PROBLEM_SCHEMA:
        raise ValueError(f"schema must be {DELAY_PROBLEM_SCHEMA!r}, got {schema!r}")
    unknown = sorted(set(doc) - _PROBLEM_KEYS)
    if unknown:
        raise ValueError(f"unknown top-level key {unknown[0]!r}")
    channel_doc = _mapping(doc, "channel")
    unknown = sorted(set(channel_doc) - _CHANNEL_KEYS)
    if unknown:
        raise ValueError(f"channel: unknown key {unknown[0]!r}")
    users = _mapping(doc, "users")
    for user_id, entry in users.items():
        if not isinstance(entry, Mapping) or set(entry) != {"position"}:
            raise ValueError(f"user {user_id!r}: must be {{'position': [x, y]}}")
    slots = doc.get("slots")
    if not isinstance(slots, list):
        raise ValueError("'slots' must be a JSON list of objects user id -> model id")
    for name in ("backhaul_bytes_per_s", "migration_bytes_per_s"):
        if name not in doc:
            raise ValueError(f"missing key {name!r}")
    return DelayProblem(
        blocks=_mapping(doc, "blocks"),
        models=_mapping(doc, "models"),
        servers=_mapping(doc, "servers"),
        users=users,
        channel=Channel(**channel_doc),
        backhaul_bytes_per_s=doc["backhaul_bytes_per_s"],
        migration_bytes_per_s=doc["migration_bytes_per_s"],
        slots=slots,
        clusters=_mapping(doc, "clusters", required=False),
        popularity=_mapping(doc, "popularity", required=False),
        deadlines_s=_mapping(doc, "deadlines_s", required=False),
    )


def delay_problem_to_json(problem: DelayProblem) -> dict[str, Any]:
    """The ``trimcache.delay-problem/v1`` document of a problem (optional tables if set)."""
    ch = problem.channel
    doc: dict[str, Any] = {
        "schema": DELAY_PROBLEM_SCHEMA,
        "blocks": dict(problem.blocks),
        "models": {m: list(ids) for m, ids in problem.models.items()},
        "servers": {
            n: {"capacity": e.capacity, "position": list(e.position)}
            for n, e in problem.servers.items()
        },
        "users": {u: {"position": list(pos)} for u, pos in problem.users.items()},
        "channel": {
            "tx_power_dbm": ch.tx_power_dbm,
            "bandwidth_hz": ch.bandwidth_hz,
            "noise_dbm_per_hz": ch.noise_dbm_per_hz,
            "coverage_m": ch.coverage_m,
        },
        "backhaul_bytes_per_s": problem.backhaul_bytes_per_s,
        "migration_bytes_per_s": problem.migration_bytes_per_s,
        "slots": [dict(s) for s in problem.slots],
    }
    if problem.clusters:
        doc["clusters"] = {c: list(ns) for c, ns in problem.clusters.items()}
    if problem.popularity:
        doc["popularity"] = {u: dict(r) for u, r in problem.popularity.items()}
    if problem.deadlines_s:
        doc["deadlines_s"] = dict(problem.deadlines_s)
    return doc


def delay_result_to_json(result: DelayResult) -> dict[str, Any]:
    """The placement-result document of a delay result (``"objective": "delay"``)."""
    doc: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "objective": "delay",
        "solver": result.solver,
        "granularity": result.granularity,
        "delivery": result.delivery,
        "servers": {
            s: {"models": list(h.models), "blocks": list(h.blocks), "used_bytes": h.used_bytes}
            for s, h in result.servers.items()
        },
        "delay": result.delay.to_json(),
        "status": result.status,
        "solve_seconds": result.solve_seconds,
    }
    if result.delay.deadline_hit_ratio is not None:
        doc["hit_ratio"] = result.delay.deadline_hit_ratio
    if result.info:
        doc["info"] = dict(result.info)
    return doc


__all__ = [
    "DELAY_PROBLEM_SCHEMA",
    "DELIVERIES",
    "GRANULARITIES",
    "STATUSES",
    "Channel",
    "DelayProblem",
    "DelayResult",
    "DelayStats",
    "Delivery",
    "EdgeNode",
    "Granularity",
    "NodeHolding",
    "delay_problem_from_json",
    "delay_problem_to_json",
    "delay_result_to_json",
    "distance_m",
]
