"""``optimal``: the placement problem as a mixed-integer program, solved by HiGHS (highspy).

Variables (only for entries that can matter: pairs someone requests and can reach):

- ``x[s, b]`` binary: server ``s`` holds block ``b``;
- ``y[s, m]`` binary: model ``m`` is available at ``s``;
- ``z[u, m]`` in ``[0, 1]``: request ``(u, m)`` is a hit.

::

    maximise   (1/|U|) * sum_{u,m} p[u][m] * z[u, m]
    subject to y[s, m] <= x[s, b]                    for every block b of m
               z[u, m] <= sum_{s in reachable(u, m)} y[s, m]
               sum_b S_b * x[s, b] <= C_s             for every server s

``z`` may stay continuous: at an optimum it equals ``min(1, sum y)``, which is 0 or 1 when the
``y`` are integral. The returned placement keeps only the blocks of models with ``y = 1``
(an ``x`` set without use is dropped), so it never uses more storage than the MILP's.

Status: ``optimal`` when HiGHS proves optimality (within ``mip_rel_gap``), ``time_limit``
with the incumbent when the time limit hits (HiGHS starts from the ``trimcaching-gen``
placement, which is also returned should HiGHS stop without any incumbent), and
``infeasible`` otherwise (not expected: holding nothing is always feasible). For small
instances only: the number of binaries grows with servers x (blocks + models).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

import highspy
import numpy as np

from controller.placement import greedy
from controller.placement._highs import quiet_highs
from controller.placement._index import blocks_of_models, build_index
from controller.placement.problem import PlacementProblem, PlacementResult, Status, make_result

DEFAULT_TIME_LIMIT_S = 60.0


def solve(
    problem: PlacementProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    mip_rel_gap: float = 1e-9,
    warm_start: bool = True,
    current: Mapping[str, Collection[str]] | None = None,
) -> PlacementResult:
    """Solve the placement MILP with HiGHS.

    Args:
        problem: the instance.
        seed: HiGHS's ``random_seed`` (default 0); the result is deterministic for a seed.
        time_limit_s: wall-clock limit for HiGHS (default 60 s).
        mip_rel_gap: relative optimality gap at which HiGHS stops and reports optimal.
        warm_start: give HiGHS the ``trimcaching-gen`` placement as its first incumbent.
        current: server id -> the blocks it holds now; the incumbent is then the greedy
            warm-started from it (which keeps what is held where it still serves).

    Returns:
        A result with status ``optimal``, ``time_limit`` or ``infeasible``.

    Example:
        >>> from controller.placement.problem import PlacementProblem
        >>> p = PlacementProblem(
        ...     blocks={"base": 8, "h0": 1, "h1": 1, "big": 9},
        ...     models={"m0": ["base", "h0"], "m1": ["base", "h1"], "m2": ["big"]},
        ...     servers={"s0": 10}, requests={"u0": {"m0": 0.3, "m1": 0.3, "m2": 0.4}},
        ...     reachable={"u0": {"s0": ["m0", "m1", "m2"]}})
        >>> r = solve(p)
        >>> r.status, r.servers["s0"].models
        ('optimal', ('m0', 'm1'))
    """
    started = time.perf_counter()
    ix = build_index(problem)
    n_pairs = len(ix.pair_server)

    # Column layout: [y pairs | x (server, block) used by some pair | z (user, model)].
    x_of: dict[tuple[int, int], int] = {}
    for k in range(n_pairs):
        s = int(ix.pair_server[k])
        for b in ix.model_blocks[int(ix.pair_model[k])].tolist():
            x_of.setdefault((s, b), n_pairs + len(x_of))
    z_key = ix.pair_users * max(ix.n_models, 1) + np.repeat(ix.pair_model, np.diff(ix.pair_start))
    z_keys, z_col = np.unique(z_key, return_inverse=True)
    z_weight = np.zeros(len(z_keys))
    np.maximum.at(z_weight, z_col, ix.pair_weight)  # same p[u][m]/|U| for every pair of (u, m)
    z_base = n_pairs + len(x_of)
    n_cols = z_base + len(z_keys)

    cost = np.zeros(n_cols)
    cost[z_base:] = z_weight
    upper = np.ones(n_cols)

    rows_start: list[int] = [0]
    rows_index: list[int] = []
    rows_value: list[float] = []
    rows_upper: list[float] = []
    for k in range(n_pairs):  # y[s,m] - x[s,b] <= 0
        s = int(ix.pair_server[k])
        for b in ix.model_blocks[int(ix.pair_model[k])].tolist():
            rows_index += [k, x_of[(s, b)]]
            rows_value += [1.0, -1.0]
            rows_start.append(len(rows_index))
            rows_upper.append(0.0)
    # z[u,m] - sum_k y_k <= 0, one row per (u, m): group the CSR entries by z column.
    entry_pair = np.repeat(np.arange(n_pairs), np.diff(ix.pair_start))
    order = np.argsort(z_col, kind="stable")
    bounds = np.searchsorted(z_col[order], np.arange(len(z_keys) + 1))
    for j in range(len(z_keys)):
        pairs = entry_pair[order[bounds[j] : bounds[j + 1]]].tolist()
        rows_index += [z_base + j, *pairs]
        rows_value += [1.0] + [-1.0] * len(pairs)
        rows_start.append(len(rows_index))
        rows_upper.append(0.0)
    by_server: dict[int, list[tuple[int, int]]] = {}
    for (s, b), col in x_of.items():
        by_server.setdefault(s, []).append((b, col))
    for s, entries in sorted(by_server.items()):  # capacity
        rows_index += [col for _, col in entries]
        rows_value += [float(ix.block_size[b]) for b, _ in entries]
        rows_start.append(len(rows_index))
        rows_upper.append(float(ix.capacity[s]))

    # Built and run with fd 1 on stderr: no HiGHS version may print on our stdout.
    with quiet_highs() as h:
        h.setOptionValue("time_limit", float(time_limit_s or DEFAULT_TIME_LIMIT_S))
        h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
        h.setOptionValue("random_seed", int(seed or 0))
        inf = highspy.kHighsInf
        h.addCols(n_cols, cost, np.zeros(n_cols), upper, 0, [], [], [])
        n_rows = len(rows_upper)
        if n_rows:
            h.addRows(
                n_rows,
                np.full(n_rows, -inf),
                np.asarray(rows_upper),
                len(rows_index),
                np.asarray(rows_start[:-1], dtype=np.int32),
                np.asarray(rows_index, dtype=np.int32),
                np.asarray(rows_value),
            )
        n_int = z_base
        if n_int:
            h.changeColsIntegrality(
                n_int,
                np.arange(n_int, dtype=np.int32),
                np.full(n_int, highspy.HighsVarType.kInteger),
            )
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        fallback: dict[str, frozenset[str]] | None = None
        if warm_start and n_cols:
            # Start from the greedy placement: HiGHS then never returns worse than greedy, even
            # when the time limit hits.
            start = np.zeros(n_cols)
            s_of = {server_id: i for i, server_id in enumerate(ix.server_ids)}
            b_of = {block_id: i for i, block_id in enumerate(ix.block_ids)}
            fallback = greedy.solve(problem, current=current).blocks_by_server()
            for server_id, held in fallback.items():
                s = s_of[server_id]
                for b in (b_of[block_id] for block_id in held):
                    if (s, b) in x_of:
                        start[x_of[(s, b)]] = 1.0
            for k in range(n_pairs):
                s = int(ix.pair_server[k])
                mb = ix.model_blocks[int(ix.pair_model[k])].tolist()
                if all(start[x_of[(s, b)]] == 1.0 for b in mb):
                    start[k] = 1.0
            np.maximum.at(start, z_base + z_col, start[entry_pair])
            h.setSolution(n_cols, np.arange(n_cols, dtype=np.int32), start)
        h.run()
        model_status = h.getModelStatus()
        has_solution = h.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible
        status: Status
        if model_status == highspy.HighsModelStatus.kOptimal or n_cols == 0:
            status = "optimal"
        elif model_status == highspy.HighsModelStatus.kTimeLimit:
            status = "time_limit"
        elif has_solution:
            status = "feasible"
        else:
            status = "infeasible"

        chosen: dict[int, list[int]] = {}
        if n_cols and (has_solution or status == "optimal"):
            values = np.asarray(h.getSolution().col_value)
            for k in np.flatnonzero(values[:n_pairs] > 0.5).tolist():
                chosen.setdefault(int(ix.pair_server[k]), []).append(int(ix.pair_model[k]))
    placement: Mapping[str, frozenset[str]] = blocks_of_models(ix, chosen)
    if fallback is not None and not (has_solution or status == "optimal"):
        placement = fallback  # HiGHS stopped before using the start: keep the greedy's
        if status == "infeasible":
            status = "feasible"
    return make_result(
        problem,
        placement,
        solver="optimal",
        status=status,
        solve_seconds=time.perf_counter() - started,
    )
