"""Classical delay solvers: ``coarse``, ``fine-unicast``, ``trimcaching-gen``,
``delay-greedy`` and ``optimal`` (pure functions problem -> :class:`DelayResult`).

Each solver fixes a granularity (what a node stores: PBs or whole models) and a delivery rule
(CoMP broadcast or unicast), chooses a placement within every node's capacity, and reports
the delay :func:`make_delay_result` computes with :func:`~controller.delay.model.evaluate_delay`'s
code, so "reported == evaluate_delay()" holds by construction (and is tested).

- ``delay-greedy`` (block, broadcast): repeatedly add the (node, PB) pair with the largest
  *marginal reduction of the mean delay per marginal byte*; the delay is evaluated with
  broadcast, so a PB that many users of a slot share gains for all of them at once. Lazy
  evaluation (CELF): a pair's last computed gain is kept as its key; the popped pair is
  re-evaluated and taken when its fresh ratio is still >= the next key. Unlike coverage, the
  delay reduction is not submodular (a second holder adds SNR, a schedule can reorder), so
  lazy evaluation is a heuristic here, not a proof of picking the eager maximum; a re-
  evaluation only touches the slots that request the PB. It stops when no pair fits or
  reduces the delay.
- ``fine-unicast`` (block, unicast) and ``coarse`` (model, unicast: the paper's whole-model
  baseline) run the same greedy under their own rules, so each baseline gets its best effort.
- ``trimcaching-gen`` runs the first system's hit-ratio greedy
  (:func:`controller.placement.greedy.solve`) on the matching placement problem (requests =
  the slots' empirical frequencies, every covering node reaches every model) and evaluates the
  placement on delay (block, broadcast).
- ``optimal`` enumerates every capacity-feasible placement of the requested units (tiny
  instances only; :class:`InstanceTooLargeError` beyond :data:`MAX_PLACEMENTS`) and keeps the
  lowest mean delay, ties to the first in enumeration order.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

from controller.delay.model import DelayInstance
from controller.delay.problem import (
    DelayProblem,
    DelayResult,
    Delivery,
    Granularity,
    NodeHolding,
)
from controller.placement.problem import Status

# `optimal` refuses instances with more capacity-feasible joint placements than this.
MAX_PLACEMENTS = 200_000


class InstanceTooLargeError(ValueError):
    """``optimal`` was given more joint placements than it enumerates."""


def make_delay_result(
    instance: DelayInstance,
    placement: Mapping[str, Collection[str]],
    *,
    solver: str,
    delivery: Delivery,
    status: Status = "feasible",
    solve_seconds: float = 0.0,
    info: Mapping[str, Any] | None = None,
) -> DelayResult:
    """Build a result whose ``delay`` is the instance's evaluation of ``placement``."""
    problem = instance.problem
    stats = instance.evaluate(placement, delivery=delivery)
    order = {u: i for i, u in enumerate(instance.unit_bytes)}
    frozen: dict[str, tuple[str, ...]] = {}
    servers: dict[str, NodeHolding] = {}
    for node_id in problem.servers:
        held = sorted(set(placement.get(node_id, ())), key=order.__getitem__)
        frozen[node_id] = tuple(held)
        if instance.granularity == "model":
            blocks = {b for m in held for b in problem.models[m]}
            servers[node_id] = NodeHolding(
                models=tuple(held),
                blocks=tuple(b for b in problem.blocks if b in blocks),
                used_bytes=instance.used_bytes(held),
            )
        else:
            have = set(held)
            servers[node_id] = NodeHolding(
                models=tuple(m for m, ids in problem.models.items() if have.issuperset(ids)),
                blocks=tuple(held),
                used_bytes=instance.used_bytes(held),
            )
    return DelayResult(
        solver=solver,
        granularity=instance.granularity,
        delivery=delivery,
        placement=MappingProxyType(frozen),
        servers=MappingProxyType(servers),
        delay=stats,
        status=status,
        solve_seconds=solve_seconds,
        info=MappingProxyType(dict(info or {})),
    )


# ---------------------------------------------------------------------------------------------
# delay-greedy and its unicast / whole-model variants


class _Evaluator:
    """Incremental sum of D_u over all requests: a change of unit b re-runs b's slots only."""

    def __init__(self, instance: DelayInstance, delivery: Delivery) -> None:
        self.instance = instance
        self.delivery = delivery
        self.holders: dict[str, frozenset[str]] = {}
        self.slot_sum = [
            sum(instance.slot_delays(t, self.holders, delivery).values())
            for t in range(len(instance.slots))
        ]

    def total(self) -> float:
        return sum(self.slot_sum)

    def _sums_with(self, unit: str, holders: Mapping[str, frozenset[str]]) -> dict[int, float]:
        return {
            t: sum(self.instance.slot_delays(t, holders, self.delivery).values())
            for t in self.instance.slots_of_unit.get(unit, ())
        }

    def gain(self, node_id: str, unit: str) -> float:
        """Reduction of the summed delay if ``node_id`` also held ``unit``."""
        trial = dict(self.holders)
        trial[unit] = self.holders.get(unit, frozenset()) | {node_id}
        return sum(self.slot_sum[t] - s for t, s in self._sums_with(unit, trial).items())

    def add(self, node_id: str, unit: str) -> None:
        self.holders[unit] = self.holders.get(unit, frozenset()) | {node_id}
        for t, s in self._sums_with(unit, self.holders).items():
            self.slot_sum[t] = s


def greedy_placement(
    instance: DelayInstance, *, delivery: Delivery
) -> tuple[dict[str, list[str]], int]:
    """Lazy greedy on marginal delay reduction per marginal byte (see module docstring).

    Returns:
        (node id -> units in the order added, number of gain evaluations).
    """
    problem = instance.problem
    ev = _Evaluator(instance, delivery)
    free = {n: problem.servers[n].capacity for n in instance.nodes}
    placement: dict[str, list[str]] = {n: [] for n in instance.nodes}
    requested = [u for u in instance.unit_bytes if u in instance.slots_of_unit]
    heap: list[tuple[float, int, str, str]] = []
    evaluations = 0
    index = 0
    for node_id in instance.nodes:
        for unit in requested:
            size = instance.unit_bytes[unit]
            if size > free[node_id]:
                continue
            g = ev.gain(node_id, unit)
            evaluations += 1
            if g > 0:
                heap.append((-g / max(size, 1), index, node_id, unit))
            index += 1
    heapq.heapify(heap)
    while heap:
        _key, idx, node_id, unit = heapq.heappop(heap)
        size = instance.unit_bytes[unit]
        if size > free[node_id]:
            continue  # capacity only shrinks: never feasible again
        g = ev.gain(node_id, unit)
        evaluations += 1
        if g <= 0:
            continue
        ratio = g / max(size, 1)
        if heap and ratio < -heap[0][0]:
            heapq.heappush(heap, (-ratio, idx, node_id, unit))
            continue
        ev.add(node_id, unit)
        placement[node_id].append(unit)
        free[node_id] -= size
    return placement, evaluations


def _greedy_solver(
    problem: DelayProblem, *, name: str, granularity: Granularity, delivery: Delivery
) -> DelayResult:
    start = time.perf_counter()
    instance = DelayInstance(problem, granularity=granularity)
    placement, evaluations = greedy_placement(instance, delivery=delivery)
    return make_delay_result(
        instance,
        placement,
        solver=name,
        delivery=delivery,
        solve_seconds=time.perf_counter() - start,
        info={"evaluations": evaluations},
    )


def solve_delay_greedy(
    problem: DelayProblem, *, seed: int | None = None, time_limit_s: float | None = None
) -> DelayResult:
    """``delay-greedy``: PB caching, CoMP broadcast, lazy marginal-delay-per-byte greedy.

    Example:
        >>> from controller.delay.scenario import tiny_problem
        >>> r = solve_delay_greedy(tiny_problem(seed=0))
        >>> r.granularity, r.delivery, r.delay.mean_s > 0
        ('block', 'broadcast', True)
    """
    del seed, time_limit_s
    return _greedy_solver(problem, name="delay-greedy", granularity="block", delivery="broadcast")


def solve_fine_unicast(
    problem: DelayProblem, *, seed: int | None = None, time_limit_s: float | None = None
) -> DelayResult:
    """``fine-unicast``: PB caching, one unicast job per user and PB."""
    del seed, time_limit_s
    return _greedy_solver(problem, name="fine-unicast", granularity="block", delivery="unicast")


def solve_coarse(
    problem: DelayProblem, *, seed: int | None = None, time_limit_s: float | None = None
) -> DelayResult:
    """``coarse``: whole-model caching with unicast delivery (the main baseline)."""
    del seed, time_limit_s
    return _greedy_solver(problem, name="coarse", granularity="model", delivery="unicast")


def to_placement_problem(problem: DelayProblem) -> Any:
    """The first system's placement problem of a delay problem.

    Requests are the slots' empirical frequencies (each user's share of its requests over all
    slots); every node covering a user (its ``K_u``) reaches every model.
    """
    from controller.placement.problem import PlacementProblem

    instance = DelayInstance(problem)
    n_slots = len(problem.slots)
    requests: dict[str, dict[str, float]] = {u: {} for u in problem.users}
    for slot in problem.slots:
        for user_id, model_id in slot.items():
            row = requests[user_id]
            row[model_id] = row.get(model_id, 0.0) + 1.0 / n_slots
    all_models = list(problem.models)
    return PlacementProblem(
        blocks=problem.blocks,
        models=problem.models,
        servers={n: e.capacity for n, e in problem.servers.items()},
        requests={u: {m: min(p, 1.0) for m, p in row.items()} for u, row in requests.items()},
        reachable={u: dict.fromkeys(instance.cover[u], all_models) for u in problem.users},
    )


def solve_trimcaching_gen(
    problem: DelayProblem, *, seed: int | None = None, time_limit_s: float | None = None
) -> DelayResult:
    """``trimcaching-gen``: the hit-ratio greedy's placement, evaluated on delay."""
    from controller.placement import greedy

    start = time.perf_counter()
    hit = greedy.solve(to_placement_problem(problem), seed=seed, time_limit_s=time_limit_s)
    instance = DelayInstance(problem)
    return make_delay_result(
        instance,
        hit.blocks_by_server(),
        solver="trimcaching-gen",
        delivery="broadcast",
        solve_seconds=time.perf_counter() - start,
        info={"hit_ratio": hit.hit_ratio},
    )


# ---------------------------------------------------------------------------------------------
# optimal (exhaustive)


def _feasible_sets(
    units: list[str], sizes: Mapping[str, int], capacity: int, limit: int
) -> list[tuple[str, ...]]:
    """Every subset of ``units`` that fits ``capacity`` (stops past ``limit`` subsets)."""
    out: list[tuple[str, ...]] = []
    for k in range(len(units) + 1):
        for combo in itertools.combinations(units, k):
            if sum(sizes[u] for u in combo) <= capacity:
                out.append(combo)
                if len(out) > limit:
                    return out
    return out


def optimal_placement(
    instance: DelayInstance,
    *,
    delivery: Delivery,
    time_limit_s: float | None = None,
) -> tuple[dict[str, tuple[str, ...]], Status, int]:
    """Exhaustive minimum of the mean delay.

    Returns:
        (placement, ``"optimal"`` or ``"time_limit"``, placements evaluated).

    Raises:
        InstanceTooLargeError: more than :data:`MAX_PLACEMENTS` joint placements.
    """
    problem = instance.problem
    units = [u for u in instance.unit_bytes if u in instance.slots_of_unit]
    per_node: list[list[tuple[str, ...]]] = []
    count = 1
    for n in instance.nodes:
        options = _feasible_sets(
            units, instance.unit_bytes, problem.servers[n].capacity, MAX_PLACEMENTS
        )
        per_node.append(options)
        count *= len(options)
        if count > MAX_PLACEMENTS:
            raise InstanceTooLargeError(
                f"optimal: more than {MAX_PLACEMENTS} placements to enumerate"
                f" ({len(instance.nodes)} nodes, {len(units)} requested units)"
            )
    start = time.perf_counter()
    best: dict[str, tuple[str, ...]] = {}
    best_mean = float("inf")
    status: Status = "optimal"
    evaluated = 0
    for combo in itertools.product(*per_node):
        placement = dict(zip(instance.nodes, combo, strict=True))
        mean = instance.evaluate(placement, delivery=delivery).mean_s
        evaluated += 1
        if mean < best_mean:
            best, best_mean = placement, mean
        if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
            status = "time_limit"
            break
    return best, status, evaluated


def solve_optimal(
    problem: DelayProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    granularity: Granularity = "block",
    delivery: Delivery = "broadcast",
) -> DelayResult:
    """``optimal``: the exact minimum mean delay under the given rules (tiny instances).

    ``granularity``/``delivery`` default to the reference rules; pass the rules of another
    solver to get the optimum that solver approximates.

    Raises:
        InstanceTooLargeError: the instance has too many joint placements.
    """
    del seed
    start = time.perf_counter()
    instance = DelayInstance(problem, granularity=granularity)
    placement, status, evaluated = optimal_placement(
        instance, delivery=delivery, time_limit_s=time_limit_s
    )
    return make_delay_result(
        instance,
        placement,
        solver="optimal",
        delivery=delivery,
        status=status,
        solve_seconds=time.perf_counter() - start,
        info={"evaluated": evaluated},
    )
