"""Classical delay solvers: ``coarse``, ``fine-unicast``, ``trimcaching-gen``,
``delay-greedy`` and ``optimal`` (pure functions problem -> :class:`DelayResult`).

Each solver fixes a granularity (what a node stores: PBs or whole models) and a delivery rule
(CoMP broadcast or unicast), chooses a placement within every node's capacity, and reports
the delay :func:`make_delay_result` computes with :func:`~controller.delay.model.evaluate_delay`'s
code, so "reported == evaluate_delay()" holds by construction (and is tested).

- ``delay-greedy`` (block, broadcast): repeatedly add the (node, candidate) pair with the
  largest *marginal reduction of the mean delay per marginal byte*, where a candidate is one
  PB or one requested model's PBs (PBs the node holds already cost nothing); the delay is
  evaluated with broadcast, so a PB that many users of a slot share gains for all of them at
  once. Lazy evaluation (CELF): a pair's last computed gain is kept as its key; the popped pair is
  re-evaluated and taken when its fresh ratio is still >= the next key. Unlike coverage, the
  delay reduction is not submodular (a second holder adds SNR, a schedule can reorder), so
  lazy evaluation is a heuristic here, not a proof of picking the eager maximum; a re-
  evaluation only touches the slots that request the PB. The re-evaluations come in batches
  (:mod:`controller.delay.lazy`: the stale tops the loop pops next, evaluated together) with
  the same pops and picks as one gain call per pop (``lazy="single"``). Gains come from
  :class:`~controller.delay.incremental.IncrementalDelay` (unicast:
  :class:`~controller.delay.unicast.UnicastDelay`; numpy; the first pass evaluates
  each candidate at every node in one call per slot, nodes out of reach of its requesters as
  one class, each gain in time proportional to the jobs and requesters it changes) and are
  rounded to :data:`GAIN_QUANTUM` of
  the empty-cache total, so the reference evaluator (``evaluator="reference"``) picks the same
  placement (tested). It stops when no pair fits or reduces the delay. On small instances
  (at most :data:`MAX_ENUMERATED_PICKS` pairs) it is
  also rerun from every pair as its forced first pick and the best run is kept.
- ``fine-unicast`` (block, unicast) and ``coarse`` (model, unicast: the paper's whole-model
  baseline) run the same greedy under their own rules, so each baseline gets its best effort.
- ``trimcaching-gen`` runs the first system's hit-ratio greedy
  (:func:`controller.placement.greedy.solve`) on the matching placement problem (requests =
  the slots' empirical frequencies, every covering node reaches every model) and evaluates the
  placement on delay (block, broadcast).
- ``optimal`` enumerates every capacity-feasible placement of the requested units (small
  instances only; :class:`InstanceTooLargeError` beyond :data:`MAX_PLACEMENTS`) and keeps the
  lowest mean delay, ties to the first in enumeration order. It is exact but not naive: a
  slot's delays depend on a placement only through, per requested unit, its holders within
  reach of the unit's requesters and whether it has any holder, so each slot is evaluated
  once per distinct projection (memoised) and the per-request delays are summed exactly as
  :meth:`DelayInstance.evaluate` sums them. Why enumeration and not an integer program or a
  bound-based search: docs/delay-model.md section 11.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, Protocol

import numpy as np

from controller.delay.incremental import IncrementalDelay
from controller.delay.lazy import FreshGains
from controller.delay.model import DelayInstance
from controller.delay.problem import (
    DelayProblem,
    DelayResult,
    Delivery,
    Granularity,
    NodeHolding,
)
from controller.delay.unicast import incremental_delay
from controller.delay.vector import VectorDelay
from controller.placement.problem import Status

# The greedy's gains are rounded to this fraction of the empty-cache summed delay (see
# greedy_placement): far below any gain that matters, far above float rounding (~1e-15).
GAIN_QUANTUM = 1e-9

# How the greedy computes gains: incremental (default; sparse, per-user deltas), vectorised
# over whole slots (the previous default) or with the reference slot_delays.
Evaluator = Literal["incremental", "vector", "reference"]
EVALUATORS: tuple[Evaluator, ...] = ("incremental", "vector", "reference")

# How the greedy's lazy loop gets a popped pair's fresh gain: from batched prefetches of the
# stale tops it pops next (default; controller.delay.lazy) or one gain call per pop (the
# previous loop). Both pick the same placement (tested).
LazyLoop = Literal["batched", "single"]
LAZY_LOOPS: tuple[LazyLoop, ...] = ("batched", "single")

# Up to this many (node, candidate) pairs the greedy is also rerun from every pair as its
# forced first pick (partial enumeration, as trimcaching-gen does) and the best run is kept.
MAX_ENUMERATED_PICKS = 64

# `optimal` refuses instances with more capacity-feasible joint placements than this.
MAX_PLACEMENTS = 1_000_000

# `optimal` memoises at most this many distinct per-slot projections per slot (memory bound).
MAX_CACHED_SLOT_KEYS = 1_000_000


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

    def gains(self, node_ids: Sequence[str], units: Collection[str]) -> list[float]:
        """:meth:`gain` of each node (the interface :class:`VectorDelay` shares)."""
        return [self.gain(n, units) for n in node_ids]

    def gain(self, node_id: str, units: Collection[str]) -> float:
        """Reduction of the summed delay if ``node_id`` also held ``units``."""
        trial = dict(self.holders)
        slots: set[int] = set()
        for unit in units:
            trial[unit] = self.holders.get(unit, frozenset()) | {node_id}
            slots.update(self.instance.slots_of_unit.get(unit, ()))
        total = 0.0
        for t in sorted(slots):
            new = sum(self.instance.slot_delays(t, trial, self.delivery).values())
            total += self.slot_sum[t] - new
        return total

    def add(self, node_id: str, unit: str) -> None:
        self.holders[unit] = self.holders.get(unit, frozenset()) | {node_id}
        for t, s in self._sums_with(unit, self.holders).items():
            self.slot_sum[t] = s


class _Gains(Protocol):
    slot_sum: list[float]

    def gains(self, node_ids: Sequence[str], units: Collection[str]) -> list[float]: ...

    def add(self, node_id: str, unit: str) -> None: ...


def _make_evaluator(instance: DelayInstance, delivery: Delivery, evaluator: Evaluator) -> _Gains:
    if evaluator == "incremental":
        return incremental_delay(instance, delivery)
    if evaluator == "vector":
        return VectorDelay(instance, delivery)
    if evaluator == "reference":
        return _Evaluator(instance, delivery)
    raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")


def greedy_placement(
    instance: DelayInstance,
    *,
    delivery: Delivery,
    first: tuple[str, int] | None = None,
    evaluator: Evaluator = "incremental",
    lazy: LazyLoop = "batched",
) -> tuple[dict[str, list[str]], int]:
    """Lazy greedy on marginal delay reduction per marginal byte (see module docstring).

    Candidates per node: every requested unit alone, and every requested model's units as one
    bundle (a PB often gains nothing until the rest of its model is also near, because the
    slowest PB sets the user's delay). A candidate's cost is the bytes of its units the node
    does not hold yet; when a node takes units, its candidates that contain them are pushed
    again with their lower cost.

    ``first`` = (node, candidate index) forces the first pick (partial enumeration).
    ``evaluator`` computes the gains: ``"incremental"`` (the default,
    :func:`~controller.delay.unicast.incremental_delay`: ``IncrementalDelay`` for broadcast,
    ``UnicastDelay`` for unicast; sparse reach, per-user deltas, 10k-model scale), ``"vector"``
    (:class:`VectorDelay`, whole slots re-scheduled per gain) or ``"reference"``
    (:meth:`DelayInstance.slot_delays` itself; slow, for checks and the bench's before/after
    rows). All give the same placement (tested). ``lazy`` = ``"batched"`` (default) reads a
    popped pair's gain from :class:`~controller.delay.lazy.FreshGains`, which evaluates the
    stale tops the loop pops next in one call per group of missing units; ``"single"`` makes
    one gain call per pop. Same pops, pushes and picks (tested).

    Returns:
        (node id -> units in the order added, number of gain evaluations).
    """
    if lazy not in LAZY_LOOPS:
        raise ValueError(f"lazy must be one of {LAZY_LOOPS}, got {lazy!r}")
    problem = instance.problem
    ev = _make_evaluator(instance, delivery, evaluator)
    free = {n: problem.servers[n].capacity for n in instance.nodes}
    held: dict[str, set[str]] = {n: set() for n in instance.nodes}
    placement: dict[str, list[str]] = {n: [] for n in instance.nodes}
    order = {u: i for i, u in enumerate(instance.unit_bytes)}
    bundles: list[tuple[str, ...]] = []
    for unit in instance.unit_bytes:
        if unit in instance.slots_of_unit:
            bundles.append((unit,))
    requested_models = {m for slot in problem.slots for m in slot.values()}
    for model_id, model_units in instance.model_units.items():
        bundle = tuple(sorted(set(model_units), key=order.__getitem__))
        if model_id in requested_models and len(bundle) > 1 and bundle not in bundles:
            bundles.append(bundle)
    containing: dict[str, list[int]] = {}
    for c, bundle in enumerate(bundles):
        for unit in bundle:
            containing.setdefault(unit, []).append(c)

    def missing(node_id: str, c: int) -> tuple[list[str], int]:
        units = [u for u in bundles[c] if u not in held[node_id]]
        return units, sum(instance.unit_bytes[u] for u in units)

    # Gains count in units of GAIN_QUANTUM x the empty-cache total, as ints: equal gains stay
    # equal and a zero stays zero whichever evaluator computed them (float rounding differs).
    quantum = GAIN_QUANTUM * max(sum(ev.slot_sum), 1e-300)

    def quantise(gains: list[float]) -> list[int]:
        return [round(g / quantum) for g in gains]

    heap: list[tuple[float, int, str, int]] = []  # (-ratio, tie index, node, bundle)
    evaluations = 0
    ties = {n: i * len(bundles) for i, n in enumerate(instance.nodes)}
    # Every node starts empty, so a bundle costs the same everywhere: one batched call each.
    for c, bundle in enumerate(bundles):
        cost = sum(instance.unit_bytes[u] for u in bundle)
        fits = [n for n in instance.nodes if cost <= free[n]]
        evaluations += len(fits)
        # the same rounding as quantise (half to even), on the whole row at once
        first_gains = np.rint(np.asarray(ev.gains(fits, bundle)) / quantum)
        for i in np.flatnonzero(first_gains > 0).tolist():
            g = int(first_gains[i])
            heap.append((-g / max(cost, 1), ties[fits[i]] + c, fits[i], c))
    heapq.heapify(heap)  # pops follow (key, unique tie): the push order does not matter
    if first is not None:
        heapq.heappush(heap, (-math.inf, -1, first[0], first[1]))  # popped first
    many = None
    # gains_many stacks broadcast job changes; UnicastDelay's items are users: plain gains.
    if isinstance(ev, IncrementalDelay) and ev.DELIVERY == "broadcast":
        gains_many = ev.gains_many

        def many(requests: Sequence[tuple[str, Sequence[str]]]) -> list[int]:
            return quantise(gains_many(requests))

    fresh = FreshGains(instance, lambda nodes, units: quantise(ev.gains(nodes, units)), many)

    def gain(node_id: str, c: int, units: list[str]) -> int:
        """The quantised gain of (node, bundle c) now (``units``: its missing units)."""
        if lazy == "single":
            return quantise(ev.gains([node_id], units))[0]
        g = fresh.get(node_id, c)
        if g is None:
            fresh.prefetch(heap, node_id, c, units, missing, free)
            g = fresh.get(node_id, c)
            assert g is not None
        return g

    while heap:
        _key, tie, node_id, c = heapq.heappop(heap)
        units, cost = missing(node_id, c)
        if not units or cost > free[node_id]:
            continue  # done, or capacity only shrinks: never feasible again
        g = gain(node_id, c, units)
        evaluations += 1
        if g <= 0:
            continue
        ratio = math.inf if tie == -1 else g / max(cost, 1)
        if heap and ratio < -heap[0][0]:
            heapq.heappush(heap, (-ratio, tie, node_id, c))
            continue
        for unit in units:
            ev.add(node_id, unit)
            held[node_id].add(unit)
            placement[node_id].append(unit)
        free[node_id] -= cost
        fresh.picked(node_id, units)
        # Cost drops: bundles sharing the new units are cheaper now; re-key them.
        for other in sorted({o for u in units for o in containing.get(u, ()) if o != c}):
            rest, new_cost = missing(node_id, other)
            if rest and new_cost <= free[node_id]:
                g = quantise(ev.gains([node_id], rest))[0]
                evaluations += 1
                if lazy == "batched":
                    fresh.put(node_id, other, rest, g, new_cost)
                if g > 0:
                    heapq.heappush(
                        heap, (-g / max(new_cost, 1), ties[node_id] + other, node_id, other)
                    )
    return placement, evaluations


def candidate_count(instance: DelayInstance) -> int:
    """The number of candidates per node of :func:`greedy_placement`."""
    singles = sum(1 for u in instance.unit_bytes if u in instance.slots_of_unit)
    requested = {m for slot in instance.problem.slots for m in slot.values()}
    bundles = {
        tuple(sorted(set(instance.model_units[m])))
        for m in requested
        if len(set(instance.model_units[m])) > 1
    }
    return singles + len(bundles)


def best_greedy_placement(
    instance: DelayInstance,
    *,
    delivery: Delivery,
    evaluator: Evaluator = "incremental",
    lazy: LazyLoop = "batched",
) -> tuple[dict[str, list[str]], int]:
    """The greedy, plus on small instances the greedy from every forced first pick; the
    placement with the lowest mean delay wins (ties: the plain greedy, then pick order)."""
    placement, evaluations = greedy_placement(
        instance, delivery=delivery, evaluator=evaluator, lazy=lazy
    )
    per_node = candidate_count(instance)
    if per_node * len(instance.nodes) > MAX_ENUMERATED_PICKS:
        return placement, evaluations
    best_mean = instance.evaluate(placement, delivery=delivery).mean_s
    for node_id in instance.nodes:
        for c in range(per_node):
            trial, n_eval = greedy_placement(
                instance, delivery=delivery, first=(node_id, c), evaluator=evaluator, lazy=lazy
            )
            evaluations += n_eval
            mean = instance.evaluate(trial, delivery=delivery).mean_s
            if mean < best_mean:
                placement, best_mean = trial, mean
    return placement, evaluations


def _greedy_solver(
    problem: DelayProblem,
    *,
    name: str,
    granularity: Granularity,
    delivery: Delivery,
    evaluator: Evaluator,
    lazy: LazyLoop,
) -> DelayResult:
    start = time.perf_counter()
    instance = DelayInstance(problem, granularity=granularity)
    placement, evaluations = best_greedy_placement(
        instance, delivery=delivery, evaluator=evaluator, lazy=lazy
    )
    return make_delay_result(
        instance,
        placement,
        solver=name,
        delivery=delivery,
        solve_seconds=time.perf_counter() - start,
        info={"evaluations": evaluations},
    )


def solve_delay_greedy(
    problem: DelayProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    evaluator: Evaluator = "incremental",
    lazy: LazyLoop = "batched",
) -> DelayResult:
    """``delay-greedy``: PB caching, CoMP broadcast, lazy marginal-delay-per-byte greedy.

    Example:
        >>> from controller.delay.scenario import tiny_problem
        >>> r = solve_delay_greedy(tiny_problem(seed=0))
        >>> r.granularity, r.delivery, r.delay.mean_s > 0
        ('block', 'broadcast', True)
    """
    del seed, time_limit_s
    return _greedy_solver(
        problem,
        name="delay-greedy",
        granularity="block",
        delivery="broadcast",
        evaluator=evaluator,
        lazy=lazy,
    )


def solve_fine_unicast(
    problem: DelayProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    evaluator: Evaluator = "incremental",
    lazy: LazyLoop = "batched",
) -> DelayResult:
    """``fine-unicast``: PB caching, one unicast job per user and PB."""
    del seed, time_limit_s
    return _greedy_solver(
        problem,
        name="fine-unicast",
        granularity="block",
        delivery="unicast",
        evaluator=evaluator,
        lazy=lazy,
    )


def solve_coarse(
    problem: DelayProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    evaluator: Evaluator = "incremental",
    lazy: LazyLoop = "batched",
) -> DelayResult:
    """``coarse``: whole-model caching with unicast delivery (the main baseline)."""
    del seed, time_limit_s
    return _greedy_solver(
        problem,
        name="coarse",
        granularity="model",
        delivery="unicast",
        evaluator=evaluator,
        lazy=lazy,
    )


# Above this many (user, model) cells trimcaching-gen's placement problem is built as arrays
# (PlacementProblem.from_arrays): the dict form expands to users x covering nodes x models
# reachable entries (150 million at 10k models x 5k users).
ARRAY_PROBLEM_CELLS = 2_000_000


def to_placement_problem(
    problem: DelayProblem, *, instance: DelayInstance | None = None, arrays: bool | None = None
) -> Any:
    """The first system's placement problem of a delay problem.

    Requests are the slots' empirical frequencies (each user's share of its requests over all
    slots); every node covering a user (its ``K_u``) reaches every model. ``arrays`` (default:
    above :data:`ARRAY_PROBLEM_CELLS` users x models) builds the same problem in the
    array-backed form (requests as a users x models matrix, reach as a threshold every
    covering node meets), on which the greedy picks the same placement (tested).
    """
    import numpy as np

    from controller.placement.arrays import ArrayForm
    from controller.placement.problem import PlacementProblem

    if instance is None:
        instance = DelayInstance(problem)
    n_slots = len(problem.slots)
    all_models = list(problem.models)
    if arrays is None:
        arrays = len(problem.users) * len(all_models) > ARRAY_PROBLEM_CELLS
    if arrays:
        users = list(problem.users)
        model_index = {m: i for i, m in enumerate(all_models)}
        node_index = {n: i for i, n in enumerate(problem.servers)}
        prob = np.zeros((len(users), len(all_models)))
        for slot in problem.slots:
            rows = [i for i, u in enumerate(users) if u in slot]
            cols = [model_index[slot[users[i]]] for i in rows]
            np.add.at(prob, (rows, cols), 1.0 / n_slots)
        np.minimum(prob, 1.0, out=prob)
        spb = np.full((len(users), len(node_index)), np.inf)
        for i, u in enumerate(users):
            spb[i, [node_index[n] for n in instance.cover[u]]] = 1.0
        form = ArrayForm(
            user_ids=tuple(users),
            prob=prob,
            seconds_per_byte=spb,
            budget=np.ones(len(all_models)),
        )
        return PlacementProblem.from_arrays(
            blocks=problem.blocks,
            models=problem.models,
            servers={n: e.capacity for n, e in problem.servers.items()},
            arrays=form,
        )
    requests: dict[str, dict[str, float]] = {u: {} for u in problem.users}
    for slot in problem.slots:
        for user_id, model_id in slot.items():
            row = requests[user_id]
            row[model_id] = row.get(model_id, 0.0) + 1.0 / n_slots
    return PlacementProblem(
        blocks=problem.blocks,
        models=problem.models,
        servers={n: e.capacity for n, e in problem.servers.items()},
        requests={u: {m: min(p, 1.0) for m, p in row.items()} for u, row in requests.items()},
        reachable={u: dict.fromkeys(instance.cover[u], all_models) for u in problem.users},
    )


def solve_trimcaching_gen(
    problem: DelayProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    arrays: bool | None = None,
) -> DelayResult:
    """``trimcaching-gen``: the hit-ratio greedy's placement, evaluated on delay
    (``arrays``: see :func:`to_placement_problem`)."""
    from controller.placement import greedy

    start = time.perf_counter()
    instance = DelayInstance(problem)
    hit = greedy.solve(
        to_placement_problem(problem, instance=instance, arrays=arrays),
        seed=seed,
        time_limit_s=time_limit_s,
    )
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
            units, instance.unit_bytes, problem.servers[n].capacity, MAX_PLACEMENTS // count
        )
        per_node.append(options)
        count *= len(options)
        if count > MAX_PLACEMENTS:
            raise InstanceTooLargeError(
                f"optimal: more than {MAX_PLACEMENTS} placements to enumerate"
                f" ({len(instance.nodes)} nodes, {len(units)} requested units)"
            )
    # [3]-[5] read a unit's holders only as `held & reach` and `bool(held)`, so a slot's
    # delays are a function of that projection: evaluate each distinct projection once.
    slot_keys = [
        tuple(
            (unit, frozenset(n for u in group for n in instance.cover[u]))
            for unit, group in slot.unit_users.items()
        )
        for slot in instance.slots
    ]
    caches: list[dict[tuple[tuple[frozenset[str], bool], ...], tuple[float, ...]]] = [
        {} for _ in instance.slots
    ]
    empty: frozenset[str] = frozenset()
    start = time.perf_counter()
    best: dict[str, tuple[str, ...]] = {}
    best_mean = float("inf")
    status: Status = "optimal"
    evaluated = 0
    for combo in itertools.product(*per_node):
        placement = dict(zip(instance.nodes, combo, strict=True))
        holders = instance.holders_of(placement)
        values: list[float] = []
        for t, keys in enumerate(slot_keys):
            key = tuple((holders.get(unit, empty) & reach, unit in holders) for unit, reach in keys)
            cached = caches[t].get(key)
            if cached is None:
                delays = instance.slot_delays(t, holders, delivery)
                cached = tuple(delays[u] for u in instance.slots[t].users)
                if len(caches[t]) < MAX_CACHED_SLOT_KEYS:
                    caches[t][key] = cached
            values.extend(cached)
        # the same sum, in the same order, as DelayInstance.evaluate's mean_s
        mean = math.fsum(values) / instance.n_requests
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
