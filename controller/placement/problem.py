"""The placement problem, its result, the JSON exchange formats and the one objective.

This module owns three things that every solver, test, simulator and benchmark share:

- :class:`PlacementProblem` and :class:`PlacementResult`, frozen ``slots`` dataclasses whose
  field names follow the exchange format of ``design.md`` ("The placement problem").
  The problem is validated once, at construction: unknown ids, negative sizes, probabilities
  outside ``[0, 1]``, request rows summing above 1 and empty libraries raise ``ValueError``
  naming the offending entry.
- :func:`evaluate`, the single definition of the cache hit ratio::

      hit = (1/|U|) * sum_u sum_m p[u][m] * [some s in reachable(u, m) holds every block of m]

  A solver's reported ``hit_ratio`` is always computed by :func:`make_result`, which calls
  :func:`evaluate`, so "reported == evaluate()" holds by construction (and is still tested).
- JSON in/out: :func:`problem_from_json`, :func:`problem_to_json`, :func:`result_to_json`,
  :func:`result_from_json` in the ``trimcache.placement-problem/v1`` and
  ``trimcache.placement-result/v1`` formats.

Invariants: inputs are never mutated (mappings are copied into read-only proxies); iteration
orders are the input orders, so everything downstream is deterministic; storage on a server is
the size of the *union* of its blocks (shared blocks count once).

Large problems (:meth:`PlacementProblem.from_arrays`) keep requests and reachability as arrays
(:mod:`controller.placement.arrays`) behind views of the same shape, so :func:`evaluate` reads
them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from controller.placement.arrays import ArrayForm, views

PROBLEM_SCHEMA = "trimcache.placement-problem/v1"
RESULT_SCHEMA = "trimcache.placement-result/v1"

Status = Literal["optimal", "feasible", "time_limit", "infeasible"]
STATUSES: tuple[str, ...] = get_args(Status)

# Request rows may sum to 1 up to float rounding of the producer.
_ROW_SUM_TOLERANCE = 1e-9


def as_size(value: object) -> int | None:
    """A byte count: an int >= 0 (an integral float such as ``1e9`` is accepted), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def check_library(
    blocks: Mapping[str, object], models: Mapping[str, object]
) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    """Validate the block and model tables both problem formats share (hit ratio and delay).

    Returns copies: block id -> size, model id -> its distinct block ids in order. Raises
    ``ValueError`` naming the offending entry (a negative size, an empty library, a model with
    no or unknown blocks).
    """
    sizes: dict[str, int] = {}
    for block_id, size in blocks.items():
        checked = as_size(size)
        if checked is None:
            raise ValueError(f"block {block_id!r}: size must be an int >= 0, got {size!r}")
        sizes[block_id] = checked
    if not models:
        raise ValueError("empty model library: 'models' has no entries")
    library: dict[str, tuple[str, ...]] = {}
    for model_id, block_ids in models.items():
        if isinstance(block_ids, str) or not isinstance(block_ids, Iterable):
            raise ValueError(f"model {model_id!r}: blocks must be a list of block ids")
        ids = tuple(dict.fromkeys(block_ids))
        if not ids:
            raise ValueError(f"model {model_id!r}: has no blocks")
        for block_id in ids:
            if block_id not in sizes:
                raise ValueError(f"model {model_id!r}: unknown block {block_id!r}")
        library[model_id] = ids
    return sizes, library


def _is_prob(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value <= 1.0
    )


@dataclass(frozen=True, slots=True)
class PlacementProblem:
    """A placement instance: blocks, models, servers, request probabilities, reachability.

    Fields are stored read-only: mappings as ``MappingProxyType`` copies, each model's blocks
    as a ``tuple`` and each reachable model set as a ``frozenset`` (so any sequence may be
    passed in).

    Args:
        blocks: block id -> size in bytes (non-negative int).
        models: model id -> its block ids (non-empty; duplicates are dropped, order kept).
        servers: server id -> capacity in bytes (non-negative int).
        requests: user id -> model id -> request probability in ``[0, 1]``; each row sums
            to at most 1 (the rest is "no request").
        reachable: user id -> server id -> models that server can deliver to the user within
            the model's deadline, if it holds them. Users missing here reach nothing.

    Raises:
        ValueError: naming the offending entry, for unknown ids, negative or non-integer sizes,
            probabilities outside ``[0, 1]``, rows summing above 1, or an empty library.

    Example:
        >>> p = PlacementProblem(
        ...     blocks={"b0": 4, "b1": 2}, models={"m0": ["b0"], "m1": ["b0", "b1"]},
        ...     servers={"s0": 6}, requests={"u0": {"m0": 0.6, "m1": 0.4}},
        ...     reachable={"u0": {"s0": ["m0", "m1"]}})
        >>> p.model_bytes("m1")
        6
    """

    blocks: Mapping[str, int]
    models: Mapping[str, Sequence[str]]
    servers: Mapping[str, int]
    requests: Mapping[str, Mapping[str, float]]
    reachable: Mapping[str, Mapping[str, Collection[str]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    arrays: ArrayForm | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_arrays(
        cls,
        *,
        blocks: Mapping[str, int],
        models: Mapping[str, Sequence[str]],
        servers: Mapping[str, int],
        arrays: ArrayForm,
    ) -> PlacementProblem:
        """A problem whose requests and reachability are arrays (10k-model scale).

        ``requests`` and ``reachable`` become read-only views of ``arrays`` with the dict
        tables' shape (see :mod:`controller.placement.arrays`); the arrays are validated
        vectorised, the block, model and server tables as usual.

        Example:
            >>> import numpy as np
            >>> form = ArrayForm(user_ids=("u0",), prob=np.array([[0.6, 0.4]]),
            ...     seconds_per_byte=np.array([[1.0]]), budget=np.array([2.0, 0.5]))
            >>> p = PlacementProblem.from_arrays(blocks={"b0": 4, "b1": 2},
            ...     models={"m0": ["b0"], "m1": ["b0", "b1"]}, servers={"s0": 6}, arrays=form)
            >>> sorted(p.reachable["u0"]["s0"]), p.requests["u0"]["m1"]
            (['m0'], 0.4)
        """
        requests, reachable = views(arrays, tuple(models), tuple(servers))
        return cls(
            blocks=blocks,
            models=models,
            servers=servers,
            requests=requests,
            reachable=reachable,
            arrays=arrays,
        )

    def __post_init__(self) -> None:
        # Internal logic: validate each table against the ones it references, then freeze
        # copies (so a caller mutating its dicts later cannot change the problem).
        blocks, models = check_library(self.blocks, self.models)
        servers: dict[str, int] = {}
        for server_id, capacity in self.servers.items():
            checked = as_size(capacity)
            if checked is None:
                raise ValueError(
                    f"server {server_id!r}: capacity must be an int >= 0, got {capacity!r}"
                )
            servers[server_id] = checked
        object.__setattr__(self, "blocks", MappingProxyType(blocks))
        object.__setattr__(self, "models", MappingProxyType(models))
        object.__setattr__(self, "servers", MappingProxyType(servers))
        if self.arrays is not None:
            # The array form validated itself; its views are read-only already.
            if self.arrays.prob.shape[1] != len(models) or (
                self.arrays.seconds_per_byte.shape[1] != len(servers)
            ):
                raise ValueError("array form: shapes do not match the model and server tables")
            return
        requests: dict[str, Mapping[str, float]] = {}
        for user_id, row in self.requests.items():
            if not isinstance(row, Mapping):
                raise ValueError(f"user {user_id!r}: requests must map model id -> probability")
            for model_id, prob in row.items():
                if model_id not in models:
                    raise ValueError(f"user {user_id!r}: unknown model {model_id!r} in requests")
                if not _is_prob(prob):
                    raise ValueError(
                        f"user {user_id!r}: probability of {model_id!r} must be in [0, 1],"
                        f" got {prob!r}"
                    )
            total = math.fsum(row.values())
            if total > 1.0 + _ROW_SUM_TOLERANCE:
                raise ValueError(f"user {user_id!r}: request probabilities sum to {total} > 1")
            requests[user_id] = MappingProxyType({m: float(p) for m, p in row.items()})
        reachable: dict[str, Mapping[str, frozenset[str]]] = {}
        model_set = frozenset(models)
        for user_id, by_server in self.reachable.items():
            if user_id not in requests:
                raise ValueError(f"reachable: unknown user {user_id!r}")
            frozen: dict[str, frozenset[str]] = {}
            for server_id, model_ids in by_server.items():
                if server_id not in servers:
                    raise ValueError(f"reachable[{user_id!r}]: unknown server {server_id!r}")
                if isinstance(model_ids, str):
                    raise ValueError(
                        f"reachable[{user_id!r}][{server_id!r}]: must be a list of model ids"
                    )
                as_set = frozenset(model_ids)
                if not as_set <= model_set:  # one C-level check per (user, server)
                    unknown = next(m for m in model_ids if m not in model_set)
                    raise ValueError(
                        f"reachable[{user_id!r}][{server_id!r}]: unknown model {unknown!r}"
                    )
                frozen[server_id] = as_set
            reachable[user_id] = MappingProxyType(frozen)
        object.__setattr__(self, "requests", MappingProxyType(requests))
        object.__setattr__(self, "reachable", MappingProxyType(reachable))

    def model_bytes(self, model_id: str) -> int:
        """Size of a model on its own: the sum of its blocks' sizes."""
        return sum(self.blocks[b] for b in self.models[model_id])

    def storage_bytes(self, block_ids: Iterable[str]) -> int:
        """Storage used by a set of blocks (each counted once)."""
        return sum(self.blocks[b] for b in set(block_ids))

    def shared_blocks(self) -> tuple[str, ...]:
        """Blocks used by at least two models, in input order."""
        count: dict[str, int] = dict.fromkeys(self.blocks, 0)
        for ids in self.models.values():
            for block_id in ids:
                count[block_id] += 1
        return tuple(b for b, n in count.items() if n >= 2)


@dataclass(frozen=True, slots=True)
class ServerPlacement:
    """What one server holds: its blocks, the models they complete, and the bytes used."""

    models: tuple[str, ...]
    blocks: tuple[str, ...]
    used_bytes: int


@dataclass(frozen=True, slots=True)
class PlacementResult:
    """A solver's answer in the ``trimcache.placement-result/v1`` shape.

    ``status`` is ``optimal`` (proved), ``feasible`` (a valid placement, no proof),
    ``time_limit`` (the best placement found when the time limit hit) or ``infeasible``.
    """

    solver: str
    servers: Mapping[str, ServerPlacement]
    hit_ratio: float
    status: Status
    solve_seconds: float

    def blocks_by_server(self) -> dict[str, frozenset[str]]:
        """Server id -> the set of blocks it holds (the input of :func:`evaluate`)."""
        return {s: frozenset(p.blocks) for s, p in self.servers.items()}


def available_models(problem: PlacementProblem, block_ids: Collection[str]) -> tuple[str, ...]:
    """Models whose every block is in ``block_ids``, in problem order."""
    held = block_ids if isinstance(block_ids, set | frozenset) else set(block_ids)
    return tuple(m for m, ids in problem.models.items() if held.issuperset(ids))


def _check_placement(problem: PlacementProblem, placement: Mapping[str, Collection[str]]) -> None:
    for server_id, block_ids in placement.items():
        if server_id not in problem.servers:
            raise ValueError(f"placement: unknown server {server_id!r}")
        for block_id in block_ids:
            if block_id not in problem.blocks:
                raise ValueError(f"placement[{server_id!r}]: unknown block {block_id!r}")


def evaluate(problem: PlacementProblem, placement: Mapping[str, Collection[str]]) -> float:
    """The cache hit ratio of a placement: the objective every solver maximises.

    Args:
        problem: the instance.
        placement: server id -> the blocks it holds (servers left out hold nothing).
            Capacity is *not* checked here; see :func:`used_bytes`.

    Returns:
        ``(1/|U|) * sum_u sum_m p[u][m] * [a reachable server of (u, m) holds all of m]``,
        summed in input order (so the value is bit-for-bit reproducible); 0 with no users.

    Raises:
        ValueError: for unknown servers or blocks in ``placement``.

    Example:
        >>> p = PlacementProblem(
        ...     blocks={"b0": 4, "b1": 2}, models={"m0": ["b0"], "m1": ["b0", "b1"]},
        ...     servers={"s0": 4}, requests={"u0": {"m0": 0.6, "m1": 0.4}},
        ...     reachable={"u0": {"s0": ["m0", "m1"]}})
        >>> evaluate(p, {"s0": ["b0"]})
        0.6
    """
    _check_placement(problem, placement)
    if not problem.requests:
        return 0.0
    available = {
        s: frozenset(available_models(problem, frozenset(ids))) for s, ids in placement.items()
    }
    total = 0.0
    for user_id, row in problem.requests.items():
        served: set[str] = set()
        for server_id, model_ids in problem.reachable.get(user_id, {}).items():
            have = available.get(server_id)
            if have:
                if isinstance(model_ids, set | frozenset):
                    served.update(have.intersection(model_ids))
                else:  # an array view: ask it about the (few) available models
                    served.update(m for m in have if m in model_ids)
        if served:
            # fsum is exactly rounded, so summing over the smaller side gives the same float.
            if len(served) < len(row):
                total += math.fsum(row.get(m, 0.0) for m in served)
            else:
                total += math.fsum(p for m, p in row.items() if m in served)
    return total / len(problem.requests)


def used_bytes(
    problem: PlacementProblem, placement: Mapping[str, Collection[str]]
) -> dict[str, int]:
    """Server id -> bytes used by its blocks (shared blocks once), for every server."""
    return {s: problem.storage_bytes(placement.get(s, ())) for s in problem.servers}


def make_result(
    problem: PlacementProblem,
    placement: Mapping[str, Collection[str]],
    *,
    solver: str,
    status: Status = "feasible",
    solve_seconds: float = 0.0,
) -> PlacementResult:
    """Build a result from per-server block sets; its hit ratio is :func:`evaluate`'s.

    Blocks are listed in problem order; ``models`` are all models the blocks complete (a
    server may complete a model it was not asked to hold: that request is a hit too).
    """
    hit_ratio = evaluate(problem, placement)
    servers: dict[str, ServerPlacement] = {}
    for server_id in problem.servers:
        held = frozenset(placement.get(server_id, ()))
        blocks = tuple(b for b in problem.blocks if b in held)
        servers[server_id] = ServerPlacement(
            models=available_models(problem, held),
            blocks=blocks,
            used_bytes=sum(problem.blocks[b] for b in blocks),
        )
    return PlacementResult(
        solver=solver,
        servers=MappingProxyType(servers),
        hit_ratio=hit_ratio,
        status=status,
        solve_seconds=solve_seconds,
    )


# ---------------------------------------------------------------------------------------------
# JSON in/out


_PROBLEM_KEYS = frozenset({"schema", "blocks", "models", "servers", "requests", "reachable"})


def _need_mapping(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"{key!r} must be a JSON object")
    return value


def problem_from_json(doc: Mapping[str, Any]) -> PlacementProblem:
    """Parse a ``trimcache.placement-problem/v1`` document (already ``json.loads``-ed).

    Raises:
        ValueError: wrong schema, unknown top-level keys, or any validation error of
            :class:`PlacementProblem`.

    Example:
        >>> problem_from_json({"schema": PROBLEM_SCHEMA, "blocks": {"b0": 1},
        ...     "models": {"m0": ["b0"]}, "servers": {"s0": 1},
        ...     "requests": {"u0": {"m0": 1.0}}, "reachable": {"u0": {"s0": ["m0"]}}}).servers
        mappingproxy({'s0': 1})
    """
    if not isinstance(doc, Mapping):
        raise ValueError("a placement problem must be a JSON object")
    schema = doc.get("schema", PROBLEM_SCHEMA)
    if schema != PROBLEM_SCHEMA:
        raise ValueError(f"schema must be {PROBLEM_SCHEMA!r}, got {schema!r}")
    unknown = sorted(set(doc) - _PROBLEM_KEYS)
    if unknown:
        raise ValueError(f"unknown top-level key {unknown[0]!r}")
    if "models" not in doc:
        raise ValueError("empty model library: 'models' is missing")
    models = _need_mapping(doc, "models")
    for model_id, ids in models.items():
        if not isinstance(ids, list | tuple):
            raise ValueError(f"model {model_id!r}: blocks must be a list of block ids")
    return PlacementProblem(
        blocks=_need_mapping(doc, "blocks"),
        models={m: tuple(ids) for m, ids in models.items()},
        servers=_need_mapping(doc, "servers"),
        requests=_need_mapping(doc, "requests"),
        reachable=_need_mapping(doc, "reachable"),
    )


def problem_to_json(problem: PlacementProblem) -> dict[str, Any]:
    """The ``trimcache.placement-problem/v1`` document of a problem (reachable lists sorted
    in model order)."""
    order = {m: i for i, m in enumerate(problem.models)}
    return {
        "schema": PROBLEM_SCHEMA,
        "blocks": dict(problem.blocks),
        "models": {m: list(ids) for m, ids in problem.models.items()},
        "servers": dict(problem.servers),
        "requests": {u: dict(row) for u, row in problem.requests.items()},
        "reachable": {
            u: {s: sorted(ms, key=order.__getitem__) for s, ms in by_server.items()}
            for u, by_server in problem.reachable.items()
        },
    }


def result_to_json(result: PlacementResult) -> dict[str, Any]:
    """The ``trimcache.placement-result/v1`` document of a result."""
    return {
        "schema": RESULT_SCHEMA,
        "solver": result.solver,
        "servers": {
            s: {"models": list(p.models), "blocks": list(p.blocks), "used_bytes": p.used_bytes}
            for s, p in result.servers.items()
        },
        "hit_ratio": result.hit_ratio,
        "status": result.status,
        "solve_seconds": result.solve_seconds,
    }


def result_from_json(doc: Mapping[str, Any]) -> PlacementResult:
    """Parse a ``trimcache.placement-result/v1`` document.

    Raises:
        ValueError: wrong schema or status, or malformed server entries.
    """
    if doc.get("schema") != RESULT_SCHEMA:
        raise ValueError(f"schema must be {RESULT_SCHEMA!r}, got {doc.get('schema')!r}")
    status = doc.get("status")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    servers: dict[str, ServerPlacement] = {}
    for server_id, entry in _need_mapping(doc, "servers").items():
        try:
            servers[server_id] = ServerPlacement(
                models=tuple(entry["models"]),
                blocks=tuple(entry["blocks"]),
                used_bytes=int(entry["used_bytes"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"servers[{server_id!r}]: malformed entry ({exc})") from exc
    return PlacementResult(
        solver=str(doc.get("solver", "")),
        servers=MappingProxyType(servers),
        hit_ratio=float(doc["hit_ratio"]),
        status=status,
        solve_seconds=float(doc.get("solve_seconds", 0.0)),
    )
