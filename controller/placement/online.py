"""Online caches ``lru`` and ``lfu``, replayed on a request trace sampled from the problem.

Each server runs one cache of *models* whose storage is the union of their blocks (a block
shared by two cached models is stored once): :mod:`core.cachepolicy`, the same policy code an
on-demand edge node runs (``EDGE_CACHE_POLICY``, :mod:`edge_node.ondemand`).

Replay. A trace is a list of ``(user, model)`` requests. A request is a hit when some server
in ``reachable(user, model)`` can serve the model (``find`` also counts a model whose blocks
all happen to be present because of other cached models; it is then inserted at no cost).
On a miss the model is inserted at the user's *home server* for it: the first server listed
in ``reachable[user]`` that can deliver it (the wireless model lists servers nearest first).

Sampling. :func:`sample_trace` draws users uniformly and each user's model from its request
row (the row's missing mass, "no request", is skipped), from a local
``numpy.random.default_rng(seed)``.

Result. The solvers return the caches' *final contents* as the placement, so the reported
hit ratio is :func:`~controller.placement.problem.evaluate` of those contents (not the
time-averaged hit ratio of the trace, which :func:`replay` also reports, for the simulator).

Warm start (``current``): each cache starts holding the models that the server's current
blocks complete (in problem order, while they fit) instead of empty.

LFU counts requests while a model is cached (counts reset on eviction) and breaks ties by
least recent use.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.placement.problem import PlacementProblem, PlacementResult, make_result
from core.cachepolicy import POLICIES, LFUCache, LRUCache, OnlineCache

__all__ = [
    "POLICIES",
    "LFUCache",
    "LRUCache",
    "OnlineCache",
    "Replay",
    "replay",
    "sample_trace",
    "solve_lfu",
    "solve_lru",
]

DEFAULT_REQUESTS_PER_USER = 20
MIN_TRACE_LENGTH = 1_000


def sample_trace(
    problem: PlacementProblem, *, length: int | None = None, seed: int | None = None
) -> list[tuple[str, str]]:
    """Sample ``(user, model)`` requests from the problem's request probabilities.

    Args:
        problem: the instance.
        length: number of draws (default ``max(1000, 20 * users)``); draws that land on a
            row's "no request" mass are skipped, so the trace may be shorter.
        seed: seed of the local RNG.

    Example:
        >>> from controller.placement.problem import PlacementProblem
        >>> p = PlacementProblem(blocks={"b": 1}, models={"m": ["b"]}, servers={},
        ...     requests={"u": {"m": 1.0}})
        >>> sample_trace(p, length=2, seed=0)
        [('u', 'm'), ('u', 'm')]
    """
    users = list(problem.requests)
    if not users:
        return []
    n = (
        length
        if length is not None
        else max(MIN_TRACE_LENGTH, DEFAULT_REQUESTS_PER_USER * len(users))
    )
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(users), size=n)
    draws = rng.random(n)
    rows = [(list(row), np.cumsum(list(row.values()))) for row in problem.requests.values()]
    trace: list[tuple[str, str]] = []
    for u, r in zip(picks.tolist(), draws.tolist(), strict=True):
        model_ids, cum = rows[u]
        i = int(np.searchsorted(cum, r, side="right"))
        if i < len(model_ids):
            trace.append((users[u], model_ids[i]))
    return trace


@dataclass(frozen=True, slots=True)
class Replay:
    """Outcome of a trace replay: final contents per server and the trace's hit counts."""

    placement: Mapping[str, frozenset[str]]
    hits: int
    requests: int
    #: Per trace entry, in order: whether it was a hit.
    outcomes: tuple[bool, ...] = ()

    @property
    def trace_hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


def replay(
    problem: PlacementProblem,
    trace: Sequence[tuple[str, str]],
    *,
    policy: str,
    current: Mapping[str, Collection[str]] | None = None,
) -> Replay:
    """Replay a trace through one ``policy`` cache per server (see the module docstring).

    Raises:
        ValueError: unknown policy, or a trace entry naming an unknown user or model.
    """
    try:
        factory = POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}") from None
    caches = {
        s: factory(capacity, problem.models, problem.blocks)
        for s, capacity in problem.servers.items()
    }
    for server_id, block_ids in (current or {}).items():
        cache = caches.get(server_id)
        if cache is None:
            continue
        holds = frozenset(block_ids)
        for model_id, model_blocks in problem.models.items():
            if holds.issuperset(model_blocks) and (
                cache.used_bytes + cache.missing_bytes(model_id) <= cache.capacity_bytes
            ):
                cache.insert(model_id)
    outcomes: list[bool] = []
    for user_id, model_id in trace:
        if user_id not in problem.requests:
            raise ValueError(f"trace: unknown user {user_id!r}")
        if model_id not in problem.models:
            raise ValueError(f"trace: unknown model {model_id!r}")
        servers = [s for s, ms in problem.reachable.get(user_id, {}).items() if model_id in ms]
        hit = any(caches[s].find(model_id) for s in servers)
        outcomes.append(hit)
        if not hit and servers:
            caches[servers[0]].get(model_id)
    placement = {s: cache.block_ids() for s, cache in caches.items()}
    return Replay(
        placement=placement, hits=sum(outcomes), requests=len(trace), outcomes=tuple(outcomes)
    )


def _solve(
    problem: PlacementProblem,
    seed: int | None,
    policy: str,
    current: Mapping[str, Collection[str]] | None,
) -> PlacementResult:
    started = time.perf_counter()
    trace = sample_trace(problem, seed=seed)
    result = replay(problem, trace, policy=policy, current=current)
    return make_result(
        problem, result.placement, solver=policy, solve_seconds=time.perf_counter() - started
    )


def solve_lru(
    problem: PlacementProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    current: Mapping[str, Collection[str]] | None = None,
) -> PlacementResult:
    """``lru``: final contents of per-server LRU caches after a sampled trace.

    Args:
        problem: the instance.
        seed: seed of the trace (``None`` means 0, so results are reproducible by default).
        time_limit_s: unused.
        current: warm start: server id -> the blocks it holds now (the caches start there).
    """
    del time_limit_s
    return _solve(problem, 0 if seed is None else seed, "lru", current)


def solve_lfu(
    problem: PlacementProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    current: Mapping[str, Collection[str]] | None = None,
) -> PlacementResult:
    """``lfu``: final contents of per-server LFU caches after a sampled trace.

    Args:
        problem: the instance.
        seed: seed of the trace (``None`` means 0).
        time_limit_s: unused.
        current: warm start: server id -> the blocks it holds now (the caches start there).
    """
    del time_limit_s
    return _solve(problem, 0 if seed is None else seed, "lfu", current)
