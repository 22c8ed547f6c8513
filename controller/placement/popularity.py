"""``popularity``: every server caches the models most requested by the users it reaches.

Each server decides alone (no coordination, so neighbouring servers tend to hold the same
popular models): it ranks models by the total request probability of the users it can serve
them to, ``sum_{u : s in reachable(u, m)} p[u][m]``, and adds them in that order while they
fit. The capacity check is union-aware (a model costs only the blocks the server lacks), so
this baseline does profit from parameter sharing; what it lacks is the per-byte value and the
coordination across servers of ``trimcaching-gen``. Ties go to a model the server holds now
(warm start, ``current``), then to the earlier model id.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

import numpy as np

from controller.placement._index import build_index
from controller.placement.problem import PlacementProblem, PlacementResult, make_result


def solve(
    problem: PlacementProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    current: Mapping[str, Collection[str]] | None = None,
) -> PlacementResult:
    """Most-requested-first caching per server.

    Args:
        problem: the instance.
        seed: unused (deterministic).
        time_limit_s: unused.
        current: warm start: server id -> the blocks it holds now; among equally popular
            models a held one goes first.

    Returns:
        A ``feasible`` result.

    Example:
        >>> from controller.placement.problem import PlacementProblem
        >>> p = PlacementProblem(
        ...     blocks={"a": 5, "b": 5}, models={"m0": ["a"], "m1": ["b"]},
        ...     servers={"s0": 5}, requests={"u0": {"m0": 0.3, "m1": 0.7}},
        ...     reachable={"u0": {"s0": ["m0", "m1"]}})
        >>> solve(p).servers["s0"].models
        ('m1',)
    """
    del seed, time_limit_s
    started = time.perf_counter()
    ix = build_index(problem)
    gains = ix.pair_gain0()
    placement: dict[str, frozenset[str]] = {}
    for s, server_id in enumerate(ix.server_ids):
        pairs = np.flatnonzero(ix.pair_server == s)
        holds = frozenset((current or {}).get(server_id, ()))
        holds_model = np.array(
            [
                holds.issuperset(ix.block_ids[b] for b in ix.model_blocks[int(m)])
                for m in ix.pair_model[pairs]
            ],
            dtype=np.bool_,
        )
        # Sort by popularity (descending), then held first, then by model index: a stable,
        # deterministic order.
        order = pairs[np.lexsort((ix.pair_model[pairs], ~holds_model, -gains[pairs]))]
        held: set[int] = set()
        remaining = int(ix.capacity[s])
        for k in order:
            blocks = [int(b) for b in ix.model_blocks[int(ix.pair_model[k])] if b not in held]
            cost = int(ix.block_size[blocks].sum()) if blocks else 0
            if cost <= remaining:
                held.update(blocks)
                remaining -= cost
        placement[server_id] = frozenset(ix.block_ids[b] for b in held)
    return make_result(
        problem, placement, solver="popularity", solve_seconds=time.perf_counter() - started
    )
