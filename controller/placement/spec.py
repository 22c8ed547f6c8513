"""``trimcaching-spec``: the (1-ε)/2-approximation of TrimCaching for few shared blocks.

The special case of Qu et al.: only a few blocks are *shared* (used by two models or more);
every other block belongs to exactly one model (its *specific* blocks). Then, for one server,
once we fix which shared blocks ``Q`` it holds, the models it can complete are those whose
shared blocks lie in ``Q``, each costing only its specific bytes, and their values add up
(different models serve different requests). That is a 0/1 knapsack with capacity
``C_s - size(Q)``, solved within (1-ε) by the classic profit-rounding dynamic program.

Internal logic:

1. Servers are decided in succession (input order). A model's value on server ``s`` is its
   marginal hit gain given the servers already decided (requests already served elsewhere
   count zero). Successive greedy over servers of a monotone submodular objective with a
   (1-ε)-approximate per-server oracle gives (1-ε)/2 of the optimum.
2. Per server, ``Q`` ranges over unions of models' shared sets (any other subset holds a
   shared block no chosen model needs, so it is dominated). A ``Q`` that is not exactly the
   union of the shared sets of the models it admits is skipped too (the smaller union admits
   the same models with more room).
3. The knapsack over admitted models: profits rounded down to multiples of
   ``K = ε * v_max / n``, a DP over rounded profit of the least weight, and backtracking.
4. The server keeps the blocks of the chosen models (shared blocks of ``Q`` that no chosen
   model uses are dropped: never worse).

Warm start (``current``): the knapsack gives ties to models that reuse more of the bytes the
server holds now, and among choices of ``Q`` of equal value (up to float noise) the one whose
models reuse more held bytes wins, so ties never move blocks.

Cost: O(|unions| * n^2 / ε) per server. Shared blocks used by exactly the same models are
one unit (a parameter block); ``max_shared_blocks`` (default 16) bounds the units, hence
|unions| by 2^16, beyond which :class:`TooManySharedBlocksError` (a ``ValueError``) is
raised: use ``trimcaching-gen``.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

import numpy as np

from controller.placement._index import BoolArray, FloatArray, IntArray, build_index
from controller.placement.problem import PlacementProblem, PlacementResult, make_result

DEFAULT_EPSILON = 0.1
MAX_SHARED_BLOCKS = 16
_NO_WEIGHT = np.iinfo(np.int64).max // 4
_TIE = 1e-12


class TooManySharedBlocksError(ValueError):
    """The instance has more shared blocks than the special-case algorithm enumerates."""


def knapsack(values: FloatArray, weights: IntArray, capacity: int, *, epsilon: float) -> list[int]:
    """0/1 knapsack within (1-ε) of the optimum by profit rounding (an FPTAS).

    Args:
        values: item values (>= 0).
        weights: item weights (ints >= 0).
        capacity: the weight budget.
        epsilon: accuracy in (0, 1).

    Returns:
        Chosen item indexes, ascending.

    Example:
        >>> knapsack(np.array([6.0, 5.0, 5.0]), np.array([3, 2, 2]), 4, epsilon=0.1)
        [1, 2]
    """
    n = len(values)
    fits = [i for i in range(n) if weights[i] <= capacity and values[i] > 0]
    if not fits:
        return []
    if int(weights[fits].sum()) <= capacity:
        return fits
    v_max = float(values[fits].max())
    scale = epsilon * v_max / len(fits)
    profits = np.floor(values[fits] / scale).astype(np.int64)
    total = int(profits.sum())
    best = np.full(total + 1, _NO_WEIGHT, dtype=np.int64)  # least weight for exact profit j
    best[0] = 0
    take = np.zeros((len(fits), total + 1), dtype=np.bool_)
    for row, i in enumerate(fits):
        p, w = int(profits[row]), int(weights[i])
        if p == 0:
            continue
        shifted = best[: total + 1 - p] + w
        better = shifted < best[p:]
        take[row, p:] = better
        best[p:] = np.where(better, shifted, best[p:])
    j = int(np.flatnonzero(best <= capacity).max())
    chosen: list[int] = []
    for row in range(len(fits) - 1, -1, -1):
        if take[row, j]:
            chosen.append(fits[row])
            j -= int(profits[row])
    return sorted(chosen)


def solve(
    problem: PlacementProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    epsilon: float = DEFAULT_EPSILON,
    max_shared_blocks: int = MAX_SHARED_BLOCKS,
    current: Mapping[str, Collection[str]] | None = None,
) -> PlacementResult:
    """The special-case TrimCaching algorithm (see the module docstring).

    Args:
        problem: the instance.
        seed: unused (deterministic).
        time_limit_s: unused.
        epsilon: knapsack accuracy; the guarantee is (1-ε)/2 of the optimum.
        max_shared_blocks: refuse instances with more shared blocks than this (blocks used
            by exactly the same models count as one).
        current: warm start: server id -> the blocks it holds now (wins ties, see the
            module docstring).

    Returns:
        A ``feasible`` result.

    Raises:
        TooManySharedBlocksError: (a ``ValueError``) more than ``max_shared_blocks`` shared
            blocks.
        ValueError: ``epsilon`` outside (0, 1).

    Example:
        >>> from controller.placement.problem import PlacementProblem
        >>> p = PlacementProblem(
        ...     blocks={"base": 8, "h0": 1, "h1": 1, "big": 9},
        ...     models={"m0": ["base", "h0"], "m1": ["base", "h1"], "m2": ["big"]},
        ...     servers={"s0": 10}, requests={"u0": {"m0": 0.3, "m1": 0.3, "m2": 0.4}},
        ...     reachable={"u0": {"s0": ["m0", "m1", "m2"]}})
        >>> solve(p).servers["s0"].models
        ('m0', 'm1')
    """
    del seed, time_limit_s
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    started = time.perf_counter()
    ix = build_index(problem)
    # Shared blocks used by exactly the same models are always held together: one bit each
    # group (a parameter block), so blocks given at tensor granularity do not blow up 2^k.
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, ms in enumerate(ix.block_models):
        if len(ms) >= 2:
            groups.setdefault(tuple(ms.tolist()), []).append(b)
    if len(groups) > max_shared_blocks:
        raise TooManySharedBlocksError(
            f"trimcaching-spec: {len(groups)} shared blocks > {max_shared_blocks} "
            "(too many subsets to enumerate); use trimcaching-gen"
        )
    bit: dict[int, int] = {}
    group_bytes: list[int] = []
    for i, members in enumerate(groups.values()):
        group_bytes.append(int(ix.block_size[members].sum()))
        for b in members:
            bit[b] = 1 << i
    n_m = ix.n_models
    shared_mask = [0] * n_m
    specific = np.zeros(n_m, dtype=np.int64)
    for m, mb in enumerate(ix.model_blocks):
        for b in mb.tolist():
            if b in bit:
                shared_mask[m] |= bit[b]
            else:
                specific[m] += ix.block_size[b]
    unions = {0}
    for mask in sorted(set(shared_mask)):
        unions |= {u | mask for u in unions}
    union_list = sorted(unions)

    def mask_bytes(mask: int) -> int:
        return sum(size for i, size in enumerate(group_bytes) if mask >> i & 1)

    covered: BoolArray = np.zeros((n_m, max(ix.n_users, 1)), dtype=np.bool_)
    placement: dict[str, frozenset[str]] = {}
    for s, server_id in enumerate(ix.server_ids):
        values = np.zeros(n_m)
        for m in range(n_m):
            k = int(ix.pair_of[s, m])
            if k >= 0:
                lo, hi = ix.pair_start[k], ix.pair_start[k + 1]
                fresh = ~covered[m, ix.pair_users[lo:hi]]
                values[m] = float(ix.pair_weight[lo:hi][fresh].sum())
        candidates = [m for m in range(n_m) if values[m] > 0]
        holds = frozenset((current or {}).get(server_id, ()))
        held_b = np.array([ix.block_ids[b] in holds for b in range(len(ix.block_ids))], bool)
        reuse = [int(ix.block_size[mb[held_b[mb]]].sum()) for mb in ix.model_blocks]
        best_value, best_held, best_models = 0.0, -1, []
        for q in union_list:
            room = int(ix.capacity[s]) - mask_bytes(q)
            if room < 0:
                continue
            # Models reusing more held bytes first: the knapsack gives ties to earlier items.
            items = sorted(
                (m for m in candidates if shared_mask[m] & ~q == 0), key=lambda m: -reuse[m]
            )
            admitted = 0
            for m in items:
                admitted |= shared_mask[m]
            if admitted != q:
                continue  # dominated by the smaller union `admitted`
            picked = knapsack(values[items], specific[items], room, epsilon=epsilon)
            value = float(values[[items[i] for i in picked]].sum()) if picked else 0.0
            models = [items[i] for i in picked]
            used = np.zeros(len(ix.block_ids), dtype=np.bool_)
            for m in models:
                used[ix.model_blocks[m]] = True
            reused = int(ix.block_size[used & held_b].sum())
            if value > best_value + _TIE or (
                value > 0 and value >= best_value - _TIE and reused > best_held
            ):
                best_value, best_held, best_models = value, reused, models
        held: set[int] = set()
        for m in best_models:
            held.update(ix.model_blocks[m].tolist())
        for m in range(n_m):  # every model the held blocks complete now serves its users
            k = int(ix.pair_of[s, m])
            if k >= 0 and held.issuperset(ix.model_blocks[m].tolist()):
                covered[m, ix.pair_users[ix.pair_start[k] : ix.pair_start[k + 1]]] = True
        placement[server_id] = frozenset(ix.block_ids[b] for b in held)
    return make_result(
        problem,
        placement,
        solver="trimcaching-spec",
        solve_seconds=time.perf_counter() - started,
    )
