"""Online caches ``lru`` and ``lfu``, replayed on a request trace sampled from the problem.

Each server runs one cache of *models* whose storage is the union of their blocks (a block
shared by two cached models is stored once). The policies share one template method,
:meth:`OnlineCache.get` (style P6, after libCacheSim's ``cache_get_base``): ``find``; on a
miss, ``to_evict`` + ``evict`` until the model's missing blocks fit, then ``insert``. They
hold metadata only (ids, sizes, counters), never bytes.

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
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.placement.problem import PlacementProblem, PlacementResult, make_result

DEFAULT_REQUESTS_PER_USER = 20
MIN_TRACE_LENGTH = 1_000


class OnlineCache:
    """A model cache with union-of-blocks storage; subclasses supply the eviction hooks.

    Args:
        capacity_bytes: the server's capacity.
        models: model id -> block ids.
        blocks: block id -> size in bytes.
    """

    def __init__(
        self,
        capacity_bytes: int,
        models: Mapping[str, Sequence[str]],
        blocks: Mapping[str, int],
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.models = models
        self.blocks = blocks
        self.refs: dict[str, int] = {}  # block id -> number of cached models using it
        self.used_bytes = 0
        self.clock = 0

    # Template method ---------------------------------------------------------------------
    def get(self, model_id: str) -> bool:
        """Request ``model_id``: True on a hit; on a miss insert it (evicting as needed)."""
        if self.find(model_id):
            return True
        if self.size_bytes(self.models[model_id]) > self.capacity_bytes:
            return False
        while self.used_bytes + self.missing_bytes(model_id) > self.capacity_bytes:
            self.evict(self.to_evict())
        self.insert(model_id)
        return False

    # Hooks ---------------------------------------------------------------------------------
    def find(self, model_id: str) -> bool:
        """Hit test; updates metadata on a hit. A model whose blocks are all present (brought by
        other models) is a hit too, and becomes cached at no cost."""
        self.clock += 1
        if self.contains(model_id):
            self.touch(model_id)
            return True
        if all(b in self.refs for b in self.models[model_id]):
            self.insert(model_id)
            return True
        return False

    def insert(self, model_id: str) -> None:
        for block_id in self.models[model_id]:
            if block_id not in self.refs:
                self.refs[block_id] = 0
                self.used_bytes += self.blocks[block_id]
            self.refs[block_id] += 1
        self.add_item(model_id)

    def evict(self, model_id: str) -> None:
        self.remove_item(model_id)
        for block_id in self.models[model_id]:
            self.refs[block_id] -= 1
            if self.refs[block_id] == 0:
                del self.refs[block_id]
                self.used_bytes -= self.blocks[block_id]

    def to_evict(self) -> str:
        raise NotImplementedError

    def contains(self, model_id: str) -> bool:
        raise NotImplementedError

    def touch(self, model_id: str) -> None:
        raise NotImplementedError

    def add_item(self, model_id: str) -> None:
        raise NotImplementedError

    def remove_item(self, model_id: str) -> None:
        raise NotImplementedError

    def cached_models(self) -> tuple[str, ...]:
        raise NotImplementedError

    # Helpers -------------------------------------------------------------------------------
    def size_bytes(self, block_ids: Sequence[str]) -> int:
        return sum(self.blocks[b] for b in set(block_ids))

    def missing_bytes(self, model_id: str) -> int:
        return sum(self.blocks[b] for b in set(self.models[model_id]) if b not in self.refs)

    def block_ids(self) -> frozenset[str]:
        return frozenset(self.refs)


class LRUCache(OnlineCache):
    """Evicts the least recently used model."""

    def __init__(
        self, capacity_bytes: int, models: Mapping[str, Sequence[str]], blocks: Mapping[str, int]
    ) -> None:
        super().__init__(capacity_bytes, models, blocks)
        self.order: OrderedDict[str, None] = OrderedDict()

    def contains(self, model_id: str) -> bool:
        return model_id in self.order

    def touch(self, model_id: str) -> None:
        self.order.move_to_end(model_id)

    def add_item(self, model_id: str) -> None:
        self.order[model_id] = None

    def remove_item(self, model_id: str) -> None:
        del self.order[model_id]

    def to_evict(self) -> str:
        return next(iter(self.order))

    def cached_models(self) -> tuple[str, ...]:
        return tuple(self.order)


class LFUCache(OnlineCache):
    """Evicts the least frequently used model (ties: least recently used)."""

    def __init__(
        self, capacity_bytes: int, models: Mapping[str, Sequence[str]], blocks: Mapping[str, int]
    ) -> None:
        super().__init__(capacity_bytes, models, blocks)
        self.meta: dict[str, tuple[int, int]] = {}  # model id -> (count, last use)

    def contains(self, model_id: str) -> bool:
        return model_id in self.meta

    def touch(self, model_id: str) -> None:
        count, _ = self.meta[model_id]
        self.meta[model_id] = (count + 1, self.clock)

    def add_item(self, model_id: str) -> None:
        self.meta[model_id] = (1, self.clock)

    def remove_item(self, model_id: str) -> None:
        del self.meta[model_id]

    def to_evict(self) -> str:
        return min(self.meta, key=self.meta.__getitem__)

    def cached_models(self) -> tuple[str, ...]:
        return tuple(self.meta)


CacheFactory = Callable[[int, Mapping[str, Sequence[str]], Mapping[str, int]], OnlineCache]
POLICIES: Mapping[str, CacheFactory] = {"lru": LRUCache, "lfu": LFUCache}


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
    hits = 0
    for user_id, model_id in trace:
        if user_id not in problem.requests:
            raise ValueError(f"trace: unknown user {user_id!r}")
        if model_id not in problem.models:
            raise ValueError(f"trace: unknown model {model_id!r}")
        servers = [s for s, ms in problem.reachable.get(user_id, {}).items() if model_id in ms]
        if any(caches[s].find(model_id) for s in servers):
            hits += 1
        elif servers:
            caches[servers[0]].get(model_id)
    placement = {s: cache.block_ids() for s, cache in caches.items()}
    return Replay(placement=placement, hits=hits, requests=len(trace))


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
