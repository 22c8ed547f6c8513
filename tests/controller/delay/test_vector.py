"""The vectorised delay (controller.delay.vector) against the reference evaluate_delay.

VectorDelay is what the greedy solvers run on; evaluate_delay stays the one definition and
the checker of every result. Here: the two agree request by request, the greedy's gains agree,
and the greedy placements are those of the implementation before the vectorised evaluator
(recorded in data/greedy_placements_a862d51.json) with every evaluator.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest

from controller.delay import evaluate_delay
from controller.delay.model import DelayInstance
from controller.delay.scenario import DelayScenario, make_delay_problem, tiny_problem
from controller.delay.solvers import (
    _Evaluator,
    solve_coarse,
    solve_delay_greedy,
    solve_fine_unicast,
)
from controller.delay.vector import VectorDelay

RTOL = 1e-9
GOLDEN = Path(__file__).parent / "data" / "greedy_placements_a862d51.json"
SOLVE = {
    "delay-greedy": solve_delay_greedy,
    "fine-unicast": solve_fine_unicast,
    "coarse": solve_coarse,
}


def _medium(seed: int, *, cluster_size: int = 0):
    scenario = dataclasses.replace(
        DelayScenario(), capacity_gb=[0.1, 0.4][seed % 2], cluster_size=cluster_size
    )
    return make_delay_problem(scenario, seed=seed)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * max(abs(a), abs(b), 1e-300)


@pytest.mark.parametrize("granularity", ["block", "model"])
@pytest.mark.parametrize("delivery", ["broadcast", "unicast"])
@pytest.mark.parametrize("csi", [0.0, 0.3])
def test_vector_evaluate_agrees_with_evaluate_delay(granularity, delivery, csi):
    problems = [tiny_problem(seed=s) for s in range(3)]
    problems += [_medium(0), _medium(1, cluster_size=2)]
    for k, p in enumerate(problems):
        instance = DelayInstance(p, granularity=granularity, csi_error_var=csi)
        vector = VectorDelay(instance, delivery)
        rng = random.Random(k)
        units = list(instance.unit_bytes)
        for _ in range(4):
            placement = {
                n: rng.sample(units, k=rng.randint(0, min(5, len(units)))) for n in instance.nodes
            }
            want = evaluate_delay(
                p, placement, granularity=granularity, delivery=delivery, csi_error_var=csi
            )
            got = vector.evaluate(placement)
            assert len(got.request_delays_s) == len(want.request_delays_s)
            for x, y in zip(got.request_delays_s, want.request_delays_s, strict=True):
                assert _close(x, y)
            for name in ("mean_s", "p95_s", "makespan_s"):
                assert _close(getattr(got, name), getattr(want, name))


@pytest.mark.parametrize("delivery", ["broadcast", "unicast"])
def test_gains_and_incremental_adds_agree_with_the_reference(delivery):
    p = _medium(0)
    instance = DelayInstance(p)
    ref, vec = _Evaluator(instance, delivery), VectorDelay(instance, delivery)
    scale = sum(ref.slot_sum)
    assert _close(sum(vec.slot_sum), scale)
    nodes = list(instance.nodes)
    units = [u for u in instance.unit_bytes if u in instance.slots_of_unit]
    for i, unit in enumerate(units):
        bundle = [unit, units[(i + 1) % len(units)]]
        for x, y in zip(ref.gains(nodes, bundle), vec.gains(nodes, bundle), strict=True):
            assert abs(x - y) <= RTOL * scale
        if i % 3 == 0:  # grow the placement as the greedy would
            ref.add(nodes[i % len(nodes)], unit)
            vec.add(nodes[i % len(nodes)], unit)
    for x, y in zip(ref.slot_sum, vec.slot_sum, strict=True):
        assert _close(x, y)


def _golden_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(GOLDEN.read_text())["cases"]
    return cases


@pytest.mark.parametrize("evaluator", ["incremental", "vector", "reference"])
def test_greedy_placements_are_the_previous_implementations(evaluator):
    cases = _golden_cases()
    assert len(cases) == 24
    for case in cases:
        seed = case["seed"]
        if case["kind"] == "tiny":
            p = tiny_problem(seed=seed, n_blocks=4 + seed % 2)
        else:
            p = _medium(seed, cluster_size=2 if seed == 3 else 0)
        r = SOLVE[case["solver"]](p, evaluator=evaluator)
        assert {n: list(v) for n, v in r.placement.items()} == case["placement"], case
        assert r.delay.mean_s == pytest.approx(case["mean_s"], rel=1e-12)


def test_unknown_evaluator_is_rejected():
    with pytest.raises(ValueError, match="evaluator must be one of"):
        solve_coarse(tiny_problem(seed=0), evaluator="fast")  # type: ignore[arg-type]
