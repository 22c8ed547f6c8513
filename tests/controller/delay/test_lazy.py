"""The greedy's batched lazy loop (controller.delay.lazy) against the one-at-a-time loop.

The batched loop reads a popped pair's gain from prefetches of the stale tops the loop pops
next and keeps memos across picks that do not touch their slots; it must make the same pops,
pushes and picks as the loop that makes one gain call per pop. Checked on random instances at
capacities where the greedy picks many units (broadcast with the incremental evaluator, and
unicast with the vector one), the number of gain evaluations included; and the incremental
evaluator's gains_many (many candidates, each at its own node) against its gains.
"""

from __future__ import annotations

import random

import pytest

from controller.delay.incremental import IncrementalDelay
from controller.delay.lazy import FreshGains
from controller.delay.model import DelayInstance
from controller.delay.problem import DelayProblem
from controller.delay.scenario import scaled_delay_problem
from controller.delay.solvers import greedy_placement, solve_delay_greedy
from tests.controller.delay.test_incremental import _grown as grown


def _grown(seed: int, factor: int, capacity_gb: float, *, cluster_size: int = 0) -> DelayProblem:
    return grown(seed, factor, capacity_gb=capacity_gb, cluster_size=cluster_size)


def _broadcast_cases() -> list[tuple[str, DelayProblem, float]]:
    return [
        ("grown x1 0.4 GB", _grown(0, 1, 0.4), 0.0),
        ("grown x2 1 GB", _grown(1, 2, 1.0), 0.0),
        ("grown x3 1 GB csi", _grown(0, 3, 1.0), 0.3),
        ("grown x2 clusters", _grown(3, 2, 1.0, cluster_size=3), 0.0),
        ("scaled 40 models 1 GB", scaled_delay_problem(40, 8, 60, capacity_gb=1.0, seed=1), 0.0),
        ("scaled 60 models 2 GB", scaled_delay_problem(60, 10, 80, capacity_gb=2.0, seed=4), 0.0),
    ]


@pytest.mark.parametrize("case", range(6))
def test_batched_lazy_loop_picks_what_the_single_loop_picks(case):
    name, problem, csi = _broadcast_cases()[case]
    instance = DelayInstance(problem, granularity="block", csi_error_var=csi)
    single = greedy_placement(instance, delivery="broadcast", lazy="single")
    batched = greedy_placement(instance, delivery="broadcast", lazy="batched")
    assert batched == single, name  # placements in pick order, and the evaluation counts
    assert sum(len(ids) for ids in single[0].values()) >= 8, name  # many picks happen


def test_batched_lazy_loop_with_the_vector_evaluator_and_unicast():
    instance = DelayInstance(_grown(5, 2, 1.0), granularity="block")
    single = greedy_placement(instance, delivery="unicast", evaluator="vector", lazy="single")
    batched = greedy_placement(instance, delivery="unicast", evaluator="vector", lazy="batched")
    assert batched == single
    assert sum(len(ids) for ids in single[0].values()) >= 4


@pytest.mark.parametrize("granularity", ["block", "model"])
@pytest.mark.parametrize("case", [0, 1, 4])
def test_batched_lazy_loop_with_the_unicast_incremental_evaluator(case, granularity):
    name, problem, _ = _broadcast_cases()[case]
    instance = DelayInstance(problem, granularity=granularity)
    single = greedy_placement(instance, delivery="unicast", lazy="single")
    batched = greedy_placement(instance, delivery="unicast", lazy="batched")
    assert batched == single, name
    vector = greedy_placement(instance, delivery="unicast", evaluator="vector", lazy="single")
    assert batched[0] == vector[0], name


def test_forced_first_pick_is_kept_by_the_batched_loop():
    instance = DelayInstance(_grown(6, 1, 0.4), granularity="block")
    node = instance.nodes[1]
    for c in (0, 3):
        want = greedy_placement(instance, delivery="broadcast", first=(node, c), lazy="single")
        got = greedy_placement(instance, delivery="broadcast", first=(node, c), lazy="batched")
        assert got == want


def test_memo_survives_only_picks_outside_its_slots_and_node():
    problem = scaled_delay_problem(40, 8, 60, capacity_gb=1.0, seed=1)
    instance = DelayInstance(problem, granularity="block")
    by_slots: dict[tuple[int, ...], str] = {}
    for unit, slots in instance.slots_of_unit.items():
        by_slots.setdefault(slots, unit)
    (slots_a, unit_a), (slots_b, unit_b) = next(
        ((a, ua), (b, ub))
        for a, ua in by_slots.items()
        for b, ub in by_slots.items()
        if not set(a) & set(b)
    )
    assert slots_a and slots_b
    node_x, node_y = instance.nodes[0], instance.nodes[1]
    fresh = FreshGains(instance, lambda nodes, units: [7] * len(nodes))
    fresh.put(node_x, 0, [unit_a], 5, 1)
    fresh.put(node_y, 1, [unit_a], 4, 1)
    fresh.picked(node_y, [unit_b])  # other slots, but node_y's own memo goes
    assert fresh.get(node_x, 0) == 5
    assert fresh.get(node_y, 1) is None
    fresh.picked(node_y, [unit_a])  # unit_a's slots: node_x's memo goes too
    assert fresh.get(node_x, 0) is None


def test_unknown_lazy_loop_is_rejected():
    instance = DelayInstance(_grown(0, 1, 0.4), granularity="block")
    with pytest.raises(ValueError, match="lazy must be one of"):
        greedy_placement(instance, delivery="broadcast", lazy="eager")  # type: ignore[arg-type]


def test_solver_result_is_the_same_with_either_loop():
    problem = _grown(7, 2, 1.0)
    a = solve_delay_greedy(problem, lazy="single")
    b = solve_delay_greedy(problem)
    assert a.placement == b.placement
    assert a.delay == b.delay
    assert a.info["evaluations"] == b.info["evaluations"]


def test_gains_many_agrees_with_gains_through_adds():
    problem = scaled_delay_problem(60, 10, 80, capacity_gb=1.0, seed=1)
    instance = DelayInstance(problem, granularity="block", csi_error_var=0.3)
    inc = IncrementalDelay(instance)
    rng = random.Random(0)
    units = [u for u in instance.unit_bytes if u in instance.slots_of_unit]
    nodes = list(instance.nodes)
    scale = sum(inc.slot_sum)
    for _ in range(4):
        requests = [(rng.choice(nodes), rng.sample(units, k=rng.randint(1, 3))) for _ in range(40)]
        many = inc.gains_many(requests)
        one = [inc.gains([n], us)[0] for n, us in requests]
        assert max(abs(a - b) for a, b in zip(many, one, strict=True)) <= 1e-12 * scale
        inc.add(rng.choice(nodes), rng.choice(units))
