"""The incremental delay (controller.delay.incremental) against the reference evaluator.

IncrementalDelay (broadcast) and its unicast sibling UnicastDelay (controller.delay.unicast)
are the greedy solvers' default evaluators (10k-model scale): their gains come from per-user
deltas, not a re-run schedule, so here they are checked against the reference `slot_delays`
(solvers._Evaluator) on random instances through sequences of adds, and their evaluate against
evaluate_delay (unicast: test_unicast.py). The golden placements are in test_vector.py
(parametrised over every evaluator).
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from controller.delay import evaluate_delay
from controller.delay.incremental import IncrementalDelay
from controller.delay.model import DelayInstance
from controller.delay.problem import DelayProblem, Delivery
from controller.delay.scenario import (
    DelayScenario,
    make_delay_problem,
    scaled_delay_problem,
    tiny_problem,
)
from controller.delay.solvers import _Evaluator, _make_evaluator, solve_trimcaching_gen
from controller.delay.unicast import UnicastDelay
from controller.delay.vector import VectorDelay

RTOL = 1e-9


def _grown(
    seed: int, factor: int, *, cluster_size: int = 0, capacity_gb: float = 0.4
) -> DelayProblem:
    scenario = dataclasses.replace(
        DelayScenario(),
        n_servers=6 * factor,
        n_users=24 * factor,
        models_per_family=3 * factor,
        area_m=800.0 * factor**0.5,
        capacity_gb=capacity_gb,
        cluster_size=cluster_size,
    )
    return make_delay_problem(scenario, seed=seed)


def _problems() -> list[DelayProblem]:
    return [
        tiny_problem(seed=1),
        _grown(0, 1),
        _grown(1, 3),
        _grown(2, 2, cluster_size=3),
        scaled_delay_problem(40, 8, 60, capacity_gb=0.5, seed=3),
    ]


@pytest.mark.parametrize("granularity", ["block", "model"])
@pytest.mark.parametrize("csi", [0.0, 0.3])
def test_gains_agree_with_the_reference_through_adds(granularity, csi):
    delivery: Delivery = "broadcast"
    for k, p in enumerate(_problems()):
        instance = DelayInstance(p, granularity=granularity, csi_error_var=csi)
        ref, inc = _Evaluator(instance, delivery), IncrementalDelay(instance, delivery)
        scale = sum(ref.slot_sum)
        for a, b in zip(ref.slot_sum, inc.slot_sum, strict=True):
            assert abs(a - b) <= RTOL * scale
        rng = random.Random(k)
        units = [u for u in instance.unit_bytes if u in instance.slots_of_unit]
        nodes = list(instance.nodes)
        for _ in range(5):
            candidate = rng.sample(units, k=rng.randint(1, min(3, len(units))))
            want = ref.gains(nodes, candidate)
            got = inc.gains(nodes, candidate)
            for x, y in zip(got, want, strict=True):
                assert abs(x - y) <= RTOL * scale, (k, candidate, x, y)
            node, unit = rng.choice(nodes), rng.choice(units)
            ref.add(node, unit)
            inc.add(node, unit)
            for a, b in zip(ref.slot_sum, inc.slot_sum, strict=True):
                assert abs(a - b) <= RTOL * scale
        assert inc.fast_rows > 0


def test_evaluate_agrees_with_evaluate_delay():
    delivery: Delivery = "broadcast"
    for k, p in enumerate(_problems()):
        instance = DelayInstance(p)
        inc = IncrementalDelay(instance, delivery)
        rng = random.Random(k)
        units = list(instance.unit_bytes)
        placement = {n: rng.sample(units, k=min(4, len(units))) for n in instance.nodes}
        want = evaluate_delay(p, placement, delivery=delivery)
        got = inc.evaluate(placement)
        for x, y in zip(got.request_delays_s, want.request_delays_s, strict=True):
            assert abs(x - y) <= RTOL * max(abs(y), 1e-300)


def test_each_class_refuses_the_other_delivery_and_the_greedy_picks_by_delivery():
    instance = DelayInstance(tiny_problem(seed=1))
    with pytest.raises(ValueError, match="broadcast delivery only"):
        IncrementalDelay(instance, "unicast")
    with pytest.raises(ValueError, match="unicast delivery only"):
        UnicastDelay(instance, "broadcast")
    assert type(_make_evaluator(instance, "unicast", "incremental")) is UnicastDelay
    assert type(_make_evaluator(instance, "broadcast", "incremental")) is IncrementalDelay
    assert type(_make_evaluator(instance, "unicast", "vector")) is VectorDelay


def test_trimcaching_gen_array_problem_gives_the_dict_problems_placement():
    for seed in range(3):
        p = _grown(seed, 3, capacity_gb=[0.1, 0.4, 1.0][seed])
        as_dicts = solve_trimcaching_gen(p, arrays=False)
        as_arrays = solve_trimcaching_gen(p, arrays=True)
        assert dict(as_arrays.placement) == dict(as_dicts.placement)
        assert as_arrays.delay == as_dicts.delay


def test_scaled_problem_is_seeded_and_sized():
    a = scaled_delay_problem(16, 5, 30, capacity_gb=0.3, seed=4)
    b = scaled_delay_problem(16, 5, 30, capacity_gb=0.3, seed=4)
    assert (len(a.models), len(a.servers), len(a.users), len(a.slots)) == (16, 5, 30, 6)
    assert a.slots == b.slots and a.users == b.users
    assert all(set(slot) == set(a.users) for slot in a.slots)
    with pytest.raises(ValueError, match="multiple of 4"):
        scaled_delay_problem(10, 5, 30, capacity_gb=0.3)
